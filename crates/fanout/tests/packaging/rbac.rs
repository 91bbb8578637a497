//! The chart's RBAC is least privilege: the token of the chart's own
//! ServiceAccount (TokenRequest API), the same identity every binary-level
//! test runs the controller as, is refused what the controller never needs.
//! That it is *enough* is shown by those tests (lifecycle, prometheus,
//! controller drain), which run the real binary with it.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use testkit::world::World;

fn forbidden<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>) {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}

#[tokio::test]
async fn the_charts_service_account_is_refused_what_the_controller_never_needs() {
    let cluster = testkit::cluster();
    let world = World::new(cluster, 1).await;
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&world.kubeconfig).unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let target = world.targets[0].name();

    // What it needs, it has (a sanity check that the token works at all).
    let secrets: Api<Secret> = Api::namespaced(client.clone(), target);
    secrets.list(&ListParams::default()).await.unwrap();

    let namespaces: Api<Namespace> = Api::all(client.clone());
    forbidden(
        "delete a namespace",
        namespaces.delete(target, &DeleteParams::default()).await,
    );
    let namespace: Namespace = serde_json::from_value(
        serde_json::json!({"metadata": {"name": testkit::random_name("nope")}}),
    )
    .unwrap();
    forbidden(
        "create a namespace",
        namespaces.create(&PostParams::default(), &namespace).await,
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), target);
    forbidden("list pods", pods.list(&ListParams::default()).await);
    forbidden(
        "delete secrets in bulk",
        secrets
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await,
    );
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    forbidden("read the CRD", crds.get("fanouts.fanout.dev").await);
    let leases: Api<Lease> = Api::namespaced(client.clone(), target);
    forbidden(
        "read a Lease outside the release namespace",
        leases.list(&ListParams::default()).await,
    );
    let own_leases: Api<Lease> = Api::namespaced(client, world.source.name());
    forbidden(
        "read another Lease in its own namespace",
        own_leases.get("someone-elses-lease").await,
    );
}
