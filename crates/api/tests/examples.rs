//! The example specs in the repository are valid.

use ibkit_api::InstanceSpec;

#[test]
fn example_cluster_spec_is_valid() {
    let text = include_str!("../../../examples/cluster/instance.json");
    let spec: InstanceSpec = serde_json::from_str(text).expect("parses");
    spec.validate().expect("valid");
    let order: Vec<&str> = spec.group_order().iter().map(|g| g.name.as_str()).collect();
    assert_eq!(order, ["init", "join"]);
}
