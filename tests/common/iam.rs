//! The IAM policies in packaging/iam/ as tests read them: their actions, and each action's
//! resources checked against ARNs of the documented formats (moto evaluates actions only, so
//! the ARN patterns are checked here, on their own).

use std::collections::BTreeSet;

pub fn policy(path: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(super::package_file(path)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// An `Action` or `Resource`: one string or a list.
pub fn one_or_many(v: &serde_json::Value) -> Vec<String> {
    match v {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(a) => a.iter().map(|s| s.as_str().unwrap().to_owned()).collect(),
        other => panic!("not a string or a list: {other}"),
    }
}

/// Every action the policy at `path` allows.
pub fn actions(path: &str) -> BTreeSet<String> {
    policy(path)["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| one_or_many(&s["Action"]))
        .collect()
}

/// Per action: ARNs that must match a `Resource` of its statements (`"*"`: the action has no
/// resource-level permissions, so `"*"` must be its only resource), and ARNs that must not.
pub fn check_resources(path: &str, cases: &[(&str, &[&str], &[&str])]) {
    let statements = policy(path)["Statement"].as_array().unwrap().clone();
    for (action, must, must_not) in cases {
        let of_action: Vec<_> = statements
            .iter()
            .filter(|s| one_or_many(&s["Action"]).iter().any(|a| a == action))
            .collect();
        let resources: Vec<String> =
            of_action.iter().flat_map(|s| one_or_many(&s["Resource"])).collect();
        assert!(!resources.is_empty(), "no statement of {path} grants {action}");
        for arn in *must {
            if *arn == "*" {
                assert_eq!(resources, ["*"], "{action} supports no resource-level permissions");
            } else {
                assert!(
                    resources.iter().any(|p| super::arn_like(p, arn)),
                    "{action}: {arn} not matched"
                );
            }
        }
        for arn in *must_not {
            assert!(!resources.iter().any(|p| super::arn_like(p, arn)), "{action}: {arn} matched");
        }
        assert!(of_action.iter().all(|s| s["Effect"] == "Allow"));
    }
}
