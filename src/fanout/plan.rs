//! The decision for one target: given what should be there and what is
//! there, what single write (if any) makes it true, or why nothing may be
//! written.
//!
//! Pure, so every branch of the conflict policy is unit-tested; the writer
//! only carries the decision out.
//!
//! A protected object (a ServiceAccount token, an object another controller
//! owns, ...: [`super::copy::CopyKind::protection`]) is a `Conflict` under
//! every policy, even when its labels claim it is this Fanout's copy: labels
//! are written by whoever may edit the object, so they prove nothing.

use super::copy::{CONTENT_HASH, Content, CopyKind, Origin, Owner};
use super::crd::ConflictPolicy;

/// The object currently in a target under the copy's name.
#[derive(Clone, Debug)]
pub struct Found {
    /// Owner recorded in its labels, if any.
    pub owner: Option<Owner>,
    /// Its content (filtered as copies hold it).
    pub content: Content,
    /// The content hash its annotation records, if any.
    pub recorded_hash: Option<String>,
    /// How the Fanout that holds it came to (if one does).
    pub origin: Origin,
    /// Why it must never be replaced or deleted, if so.
    pub protection: Option<String>,
}

impl Found {
    /// What planning needs to know about `object`.
    pub fn of<K: CopyKind>(object: &K) -> Self {
        use kube::ResourceExt;
        Self {
            owner: Owner::from_labels(object.labels()),
            content: object.content(),
            recorded_hash: object.annotations().get(CONTENT_HASH).cloned(),
            origin: Origin::of(object.annotations()),
            protection: object.protection(),
        }
    }
}

/// A write that changes a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    /// Nothing there yet.
    Create,
    /// Our copy drifted (or is stale): replace it in place.
    Update,
    /// Replace by delete-and-create: the Secret type differs, or the object
    /// is immutable, so an update cannot make it true.
    Recreate,
    /// Take over an object we did not make whose content already matches.
    Adopt,
    /// Remove a copy that must not be there (no consent, pruned, cleanup).
    Delete,
    /// Let go of an object the Fanout adopted or overwrote: remove its
    /// Fanout labels and annotations, leave the object.
    Release,
}

impl Operation {
    /// Every operation, for metrics.
    pub const ALL: [Operation; 6] = [
        Self::Create,
        Self::Update,
        Self::Recreate,
        Self::Adopt,
        Self::Delete,
        Self::Release,
    ];

    /// Lowercase name, the metrics label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Recreate => "recreate",
            Self::Adopt => "adopt",
            Self::Delete => "delete",
            Self::Release => "release",
        }
    }
}

/// What to do in one target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// The copy there is already true.
    Keep,
    /// Write this; the copy then records this origin.
    Write(Operation, Origin),
    /// Leave it alone; the message says why (state `Conflict`).
    Conflict(String),
}

/// Who is deciding: the Fanout and how it treats objects it did not make.
#[derive(Clone, Copy, Debug)]
pub struct Decider<'a> {
    /// The Fanout.
    pub owner: &'a Owner,
    /// Its conflict policy.
    pub policy: ConflictPolicy,
}

impl Decider<'_> {
    /// Decides for one target. `describe` names the object in messages
    /// (e.g. `secret team-b/regcred`); `other_owner_exists` tells whether a
    /// Fanout named in a foreign copy's labels still exists.
    pub fn plan(
        &self,
        desired: &Content,
        desired_hash: &str,
        found: Option<&Found>,
        describe: &str,
        other_owner_exists: impl Fn(&Owner) -> bool,
    ) -> Plan {
        let Some(found) = found else {
            return Plan::Write(Operation::Create, Origin::Created);
        };
        if let Some(reason) = &found.protection {
            return Plan::Conflict(format!(
                "{describe} is {reason}: a Fanout never replaces or deletes it"
            ));
        }
        match &found.owner {
            Some(owner) if owner.uid == self.owner.uid => {
                let current = found.recorded_hash.as_deref() == Some(desired_hash)
                    && found.content.agrees_with(desired);
                if current {
                    Plan::Keep
                } else {
                    Plan::Write(replacement(desired, &found.content), found.origin)
                }
            }
            // Two Fanouts writing one object would undo each other forever,
            // so another live Fanout's copy is a conflict under every policy.
            Some(owner) if other_owner_exists(owner) => Plan::Conflict(format!(
                "{describe} is managed by Fanout {}/{}",
                owner.namespace, owner.name
            )),
            _ => self.foreign(desired, found, describe),
        }
    }

    /// An object this Fanout did not make (or whose Fanout is gone).
    fn foreign(&self, desired: &Content, found: &Found, describe: &str) -> Plan {
        let ours = format!("{}/{}", self.owner.namespace, self.owner.name);
        match self.policy {
            ConflictPolicy::Skip => Plan::Conflict(format!(
                "{describe} exists and is not managed by {ours} (conflictPolicy Skip)"
            )),
            ConflictPolicy::Adopt if desired.same_payload(&found.content) => {
                if found.content.immutable != desired.immutable {
                    Plan::Write(replacement(desired, &found.content), Origin::Adopted)
                } else {
                    Plan::Write(Operation::Adopt, Origin::Adopted)
                }
            }
            ConflictPolicy::Adopt => Plan::Conflict(format!(
                "{describe} exists with different content and is not managed by {ours}; conflictPolicy Adopt only takes over an object whose content already matches"
            )),
            ConflictPolicy::Overwrite => {
                Plan::Write(replacement(desired, &found.content), Origin::Overwritten)
            }
        }
    }
}

/// How to turn `found` into `desired`: in place when the API allows it.
fn replacement(desired: &Content, found: &Content) -> Operation {
    let type_changed = desired.type_ != found.type_;
    let locked = found.immutable && (!desired.same_payload(found) || !desired.immutable);
    if type_changed || locked {
        Operation::Recreate
    } else {
        Operation::Update
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(uid: &str) -> Owner {
        Owner {
            namespace: "platform".into(),
            name: format!("fanout-{uid}"),
            uid: uid.into(),
        }
    }

    fn content(value: &str) -> Content {
        let mut c = Content {
            type_: Some("Opaque".into()),
            ..Content::default()
        };
        c.data.insert("k".into(), value.as_bytes().to_vec());
        c
    }

    fn found(owner_uid: Option<&str>, content: Content) -> Found {
        Found {
            owner: owner_uid.map(self::owner),
            recorded_hash: Some(content.hash()),
            content,
            origin: Origin::Created,
            protection: None,
        }
    }

    /// The origin the tests' writes record; checked on its own below.
    const ORIGIN: Origin = Origin::Created;

    fn plan(policy: ConflictPolicy, desired: &Content, existing: Option<&Found>) -> Plan {
        let me = owner("me");
        Decider { owner: &me, policy }.plan(desired, &desired.hash(), existing, "secret t/x", |o| {
            o.uid == "alive"
        })
    }

    #[test]
    fn nothing_there_is_created() {
        assert_eq!(
            plan(ConflictPolicy::Skip, &content("v"), None),
            Plan::Write(Operation::Create, ORIGIN)
        );
    }

    #[test]
    fn our_true_copy_is_kept_and_a_drifted_one_updated() {
        let desired = content("v");
        let ours = found(Some("me"), content("v"));
        assert_eq!(
            plan(ConflictPolicy::Skip, &desired, Some(&ours)),
            Plan::Keep
        );
        let drifted = found(Some("me"), content("edited"));
        assert_eq!(
            plan(ConflictPolicy::Skip, &desired, Some(&drifted)),
            Plan::Write(Operation::Update, ORIGIN)
        );
    }

    #[test]
    fn a_changed_type_or_immutable_copy_is_recreated() {
        let desired = content("v");
        let mut retyped = content("v");
        retyped.type_ = Some("kubernetes.io/tls".into());
        assert_eq!(
            plan(
                ConflictPolicy::Skip,
                &desired,
                Some(&found(Some("me"), retyped))
            ),
            Plan::Write(Operation::Recreate, ORIGIN)
        );
        let mut immutable = content("old");
        immutable.immutable = true;
        assert_eq!(
            plan(
                ConflictPolicy::Skip,
                &desired,
                Some(&found(Some("me"), immutable))
            ),
            Plan::Write(Operation::Recreate, ORIGIN)
        );
    }

    #[test]
    fn becoming_immutable_is_an_update_but_leaving_it_is_not() {
        let mut desired = content("v");
        desired.immutable = true;
        assert_eq!(
            plan(
                ConflictPolicy::Skip,
                &desired,
                Some(&found(Some("me"), content("v")))
            ),
            Plan::Write(Operation::Update, ORIGIN)
        );
        let mut was_immutable = content("v");
        was_immutable.immutable = true;
        assert_eq!(
            plan(
                ConflictPolicy::Skip,
                &content("v"),
                Some(&found(Some("me"), was_immutable))
            ),
            Plan::Write(Operation::Recreate, ORIGIN)
        );
    }

    #[test]
    fn skip_never_touches_a_foreign_object() {
        let Plan::Conflict(message) = plan(
            ConflictPolicy::Skip,
            &content("v"),
            Some(&found(None, content("v"))),
        ) else {
            panic!("expected a conflict");
        };
        assert_eq!(
            message,
            "secret t/x exists and is not managed by platform/fanout-me (conflictPolicy Skip)"
        );
    }

    #[test]
    fn adopt_takes_over_only_matching_content() {
        let desired = content("v");
        assert_eq!(
            plan(
                ConflictPolicy::Adopt,
                &desired,
                Some(&found(None, content("v")))
            ),
            Plan::Write(Operation::Adopt, Origin::Adopted)
        );
        assert!(matches!(
            plan(ConflictPolicy::Adopt, &desired, Some(&found(None, content("other")))),
            Plan::Conflict(m) if m.contains("different content")
        ));
    }

    #[test]
    fn overwrite_replaces_a_foreign_object() {
        assert_eq!(
            plan(
                ConflictPolicy::Overwrite,
                &content("v"),
                Some(&found(None, content("other")))
            ),
            Plan::Write(Operation::Update, Origin::Overwritten)
        );
    }

    #[test]
    fn another_live_fanouts_copy_is_a_conflict_under_every_policy() {
        for policy in [
            ConflictPolicy::Skip,
            ConflictPolicy::Adopt,
            ConflictPolicy::Overwrite,
        ] {
            let other = found(Some("alive"), content("v"));
            assert!(matches!(
                plan(policy, &content("v"), Some(&other)),
                Plan::Conflict(m) if m.contains("managed by Fanout platform/fanout-alive")
            ));
        }
    }

    #[test]
    fn a_dead_fanouts_leftover_falls_under_the_policy() {
        let leftover = found(Some("gone"), content("v"));
        assert!(matches!(
            plan(ConflictPolicy::Skip, &content("v"), Some(&leftover)),
            Plan::Conflict(_)
        ));
        assert_eq!(
            plan(ConflictPolicy::Overwrite, &content("x"), Some(&leftover)),
            Plan::Write(Operation::Update, Origin::Overwritten)
        );
    }

    #[test]
    fn a_protected_object_is_a_conflict_under_every_policy_whatever_its_labels() {
        for owner in [None, Some("me")] {
            let mut token = found(owner, content("other"));
            token.protection = Some("a ServiceAccount token".into());
            for policy in [
                ConflictPolicy::Skip,
                ConflictPolicy::Adopt,
                ConflictPolicy::Overwrite,
            ] {
                assert!(matches!(
                    plan(policy, &content("v"), Some(&token)),
                    Plan::Conflict(m) if m.contains("a ServiceAccount token") && m.contains("never replaces")
                ));
            }
        }
    }

    #[test]
    fn keys_others_added_to_our_copy_are_not_drift() {
        let desired = content("v");
        let mut ours = found(Some("me"), content("v"));
        ours.content
            .labels
            .insert("policy.example.com/scanned".into(), "true".into());
        assert_eq!(
            plan(ConflictPolicy::Skip, &desired, Some(&ours)),
            Plan::Keep
        );
        ours.recorded_hash = Some("sha256:older".into());
        assert_eq!(
            plan(ConflictPolicy::Skip, &desired, Some(&ours)),
            Plan::Write(Operation::Update, ORIGIN),
            "a copy written for another source content is rewritten"
        );
    }

    #[test]
    fn an_adopted_copy_keeps_its_origin_when_it_is_rewritten() {
        let mut adopted = found(Some("me"), content("old"));
        adopted.origin = Origin::Adopted;
        assert_eq!(
            plan(ConflictPolicy::Skip, &content("new"), Some(&adopted)),
            Plan::Write(Operation::Update, Origin::Adopted)
        );
    }
}
