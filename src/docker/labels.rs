//! The labels the ECS agent puts on every container it starts: which cluster, task and
//! task-definition revision the container belongs to, and its name in the task definition.
//! Read by the enrichment (record fields) and by capacity (which task holds what).

pub const ECS_CLUSTER: &str = "com.amazonaws.ecs.cluster";
pub const ECS_TASK_ARN: &str = "com.amazonaws.ecs.task-arn";
pub const ECS_CONTAINER_NAME: &str = "com.amazonaws.ecs.container-name";
pub const ECS_TASK_DEFINITION_FAMILY: &str = "com.amazonaws.ecs.task-definition-family";
pub const ECS_TASK_DEFINITION_VERSION: &str = "com.amazonaws.ecs.task-definition-version";

/// The task id: the last part of a task ARN of the new format
/// (`arn:aws:ecs:REGION:ACCOUNT:task/CLUSTER/ID`); empty when the ARN has no `/`.
pub fn task_id(task_arn: &str) -> &str {
    task_arn.rsplit('/').next().filter(|_| task_arn.contains('/')).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_id_is_the_last_part_of_the_arn() {
        assert_eq!(task_id("arn:aws:ecs:eu-west-1:123456789012:task/c1/0123abcd"), "0123abcd");
        assert_eq!(task_id("arn:aws:ecs:eu-west-1:123456789012:task/0123abcd"), "0123abcd");
        assert_eq!(task_id("no-slash"), "");
        assert_eq!(task_id(""), "");
    }
}
