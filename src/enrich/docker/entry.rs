//! One cache entry: what Docker tells of a container ([`Inspected`]) encoded once into the
//! fields to add ([`build_container`]). Pure: no I/O.

use crate::config::{DockerEnrichConfig, DockerField};
use crate::docker::labels::{
    task_id, ECS_CLUSTER, ECS_CONTAINER_NAME, ECS_TASK_ARN, ECS_TASK_DEFINITION_FAMILY,
    ECS_TASK_DEFINITION_VERSION,
};
use crate::docker::Summary;
use crate::enrich::record::Fields;
use crate::reassemble::MULTILINE_LABEL;
use std::collections::HashMap;

/// What the cache knows of one container.
#[derive(Debug)]
pub struct Container {
    pub id: String,
    /// Without the leading `/`.
    pub name: String,
    /// The configured fields, labels and env, encoded once.
    pub fields: Fields,
    /// Label `berth.multiline.start`, as written.
    pub multiline_start: Option<String>,
    /// What the entry was built from: a refresh from the container list keeps what only an
    /// inspect tells (`env`, the image's name).
    pub(super) source: Inspected,
}

/// What Docker tells of a container, before it is encoded (a seam for tests).
#[derive(Debug, Default, Clone)]
pub struct Inspected {
    pub id: String,
    pub name: String,
    pub image: String,
    pub labels: HashMap<String, String>,
    /// `NAME=VALUE` entries as Docker reports them.
    pub env: Vec<String>,
    /// Whether this comes from an inspect, whose `env` and `image` (as the container was
    /// created from) are the container's for life. The list has no environment, and names
    /// the image by its id once its tag has moved to another image.
    pub inspected: bool,
}

impl Inspected {
    pub(super) fn from_inspect(info: bollard::models::ContainerInspectResponse) -> Inspected {
        let config = info.config.unwrap_or_default();
        Inspected {
            id: info.id.unwrap_or_default(),
            name: info.name.unwrap_or_default(),
            image: config.image.filter(|i| !i.is_empty()).or(info.image).unwrap_or_default(),
            labels: config.labels.unwrap_or_default(),
            env: config.env.unwrap_or_default(),
            inspected: true,
        }
    }

    pub(super) fn from_summary(s: &Summary) -> Inspected {
        Inspected {
            id: s.id.clone(),
            name: s.name.clone(),
            image: s.image.clone(),
            labels: s.labels.clone(),
            env: Vec::new(),
            inspected: false,
        }
    }
}

/// The cache entry for `c` under `cfg`: fields in the configured order, empty values left
/// out.
pub fn build_container(cfg: &DockerEnrichConfig, c: &Inspected) -> Container {
    let label = |k: &str| c.labels.get(k).map(String::as_str).unwrap_or("");
    let name = c.name.trim_start_matches('/');
    let arn = label(ECS_TASK_ARN);
    let mut fields = Fields::new();
    for f in &cfg.fields {
        let v = match f {
            DockerField::ContainerName => name,
            DockerField::Image => c.image.as_str(),
            DockerField::EcsCluster => label(ECS_CLUSTER),
            DockerField::EcsTaskArn => arn,
            DockerField::EcsTaskId => task_id(arn),
            DockerField::EcsTaskDefinitionFamily => label(ECS_TASK_DEFINITION_FAMILY),
            DockerField::EcsTaskDefinitionRevision => label(ECS_TASK_DEFINITION_VERSION),
            DockerField::EcsContainerName => label(ECS_CONTAINER_NAME),
        };
        if !v.is_empty() {
            fields.push_str(f.as_str(), v);
        }
    }
    for l in &cfg.labels {
        if let Some(v) = c.labels.get(&l.name) {
            fields.push_str(&l.key, v);
        }
    }
    for e in &cfg.env {
        let v = c
            .env
            .iter()
            .find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == e.name).map(|(_, v)| v));
        if let Some(v) = v {
            fields.push_str(&e.key, v);
        }
    }
    Container {
        id: c.id.clone(),
        name: name.to_string(),
        fields,
        multiline_start: c.labels.get(MULTILINE_LABEL).cloned(),
        source: c.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::cfg;
    use super::*;

    fn ecs() -> Inspected {
        let labels = [
            (ECS_CLUSTER, "c1"),
            (ECS_TASK_ARN, "arn:aws:ecs:eu-west-1:123456789012:task/c1/0123abcd"),
            (ECS_CONTAINER_NAME, "app"),
            (ECS_TASK_DEFINITION_FAMILY, "fam"),
            (ECS_TASK_DEFINITION_VERSION, "3"),
            ("team", "core"),
            (MULTILINE_LABEL, "^\\d{4}-"),
        ];
        Inspected {
            id: "abc".into(),
            name: "/web".into(),
            image: "nginx:1".into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            env: vec!["PATH=/bin".into(), "APP_ENV=prod=eu".into()],
            inspected: true,
        }
    }

    #[test]
    fn fields_come_from_labels_and_inspect_in_config_order() {
        let c = build_container(&cfg(), &ecs());
        let got: Vec<(&str, &str)> = c.fields.iter().collect();
        assert_eq!(
            got,
            [
                ("container_name", "web"),
                ("image", "nginx:1"),
                ("ecs_cluster", "c1"),
                ("ecs_task_arn", "arn:aws:ecs:eu-west-1:123456789012:task/c1/0123abcd"),
                ("ecs_task_id", "0123abcd"),
                ("ecs_task_definition_family", "fam"),
                ("ecs_task_definition_revision", "3"),
                ("ecs_container_name", "app"),
                ("team", "core"),
                ("app_env", "prod=eu"),
            ]
        );
        assert_eq!(c.multiline_start.as_deref(), Some("^\\d{4}-"));
    }

    #[test]
    fn a_plain_container_has_only_name_and_image() {
        let c = build_container(
            &cfg(),
            &Inspected {
                id: "x".into(),
                name: "/db".into(),
                image: "pg".into(),
                ..Default::default()
            },
        );
        assert_eq!(
            c.fields.iter().collect::<Vec<_>>(),
            [("container_name", "db"), ("image", "pg")]
        );
        assert_eq!(c.multiline_start, None);
    }
}
