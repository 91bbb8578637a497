//! What a target needs, decided purely from what should be there
//! ([`Desired`]) and what is ([`Found`]): keep, write (and how), or leave it
//! alone as a `Conflict`.
//!
//! A protected object is a `Conflict` under every policy, even when its
//! labels claim it is this Fanout's copy: labels are written by whoever may
//! edit the object, so they prove nothing. Another live Fanout's copy is a
//! `Conflict` too: two Fanouts writing one object would undo each other.

use crate::copy::{Desired, Operation, Origin, Owner, Payload};
use crate::crd::ConflictPolicy;
use crate::found::Found;

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
        desired: &Desired,
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
                let current =
                    found.recorded_hash == Some(desired.hash_bytes) && found.agrees_with(desired);
                if current {
                    Plan::Keep
                } else {
                    Plan::Write(replacement(&desired.payload, &found.payload), found.origin)
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
    fn foreign(&self, desired: &Desired, found: &Found, describe: &str) -> Plan {
        let ours = format!("{}/{}", self.owner.namespace, self.owner.name);
        match self.policy {
            ConflictPolicy::Skip => Plan::Conflict(format!(
                "{describe} exists and is not managed by {ours} (conflictPolicy Skip)"
            )),
            ConflictPolicy::Adopt if desired.payload.same_bytes(&found.payload) => {
                if found.payload.immutable != desired.payload.immutable {
                    Plan::Write(
                        replacement(&desired.payload, &found.payload),
                        Origin::Adopted,
                    )
                } else {
                    Plan::Write(Operation::Adopt, Origin::Adopted)
                }
            }
            ConflictPolicy::Adopt => Plan::Conflict(format!(
                "{describe} exists with different content and is not managed by {ours}; conflictPolicy Adopt only takes over an object whose content already matches"
            )),
            ConflictPolicy::Overwrite => Plan::Write(
                replacement(&desired.payload, &found.payload),
                Origin::Overwritten,
            ),
        }
    }
}

/// How to turn `found` into `desired`: in place when the API allows it.
fn replacement(desired: &Payload, found: &Payload) -> Operation {
    let type_changed = desired.type_ != found.type_;
    let locked = found.immutable && (!desired.same_bytes(found) || !desired.immutable);
    if type_changed || locked {
        Operation::Recreate
    } else {
        Operation::Update
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::ObjectMeta;

    use super::*;
    use crate::copy::{CONTENT_HASH, Content, CopyKind};
    use crate::found::Entry;

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

    /// An object holding `content`, labelled as the copy of `owner_uid`'s
    /// Fanout if given.
    fn found(owner_uid: Option<&str>, content: Content) -> Found {
        let mut meta = ObjectMeta {
            name: Some("x".into()),
            namespace: Some("t".into()),
            labels: Some(content.labels.clone()),
            annotations: Some(content.annotations.clone()),
            ..ObjectMeta::default()
        };
        if let Some(uid) = owner_uid {
            let labels = meta.labels.get_or_insert_with(Default::default);
            labels.extend(owner(uid).labels());
            let annotations = meta.annotations.get_or_insert_with(Default::default);
            annotations.insert(CONTENT_HASH.into(), content.hash());
        }
        Found::of(&Secret::from_content(meta, &content))
    }

    /// The origin the tests' writes record; checked on its own below.
    const ORIGIN: Origin = Origin::Created;

    fn plan(policy: ConflictPolicy, desired: &Content, existing: Option<&Found>) -> Plan {
        let me = owner("me");
        let desired = Desired::new(desired.clone());
        Decider { owner: &me, policy }.plan(&desired, existing, "secret t/x", |o| o.uid == "alive")
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
        let mut labels = ours.labels.to_vec();
        labels.push(Entry {
            key: "policy.example.com/scanned".into(),
            value: "true".into(),
            ours: false,
        });
        ours.labels = labels.into();
        assert_eq!(
            plan(ConflictPolicy::Skip, &desired, Some(&ours)),
            Plan::Keep
        );
        ours.recorded_hash = Some([7; 32]);
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
