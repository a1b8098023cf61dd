output "ecs_config_lines" {
  description = "Lines for /etc/ecs/ecs.config on every container instance (the launch template's user data): the fluentd driver allowed, and task roles on the host network (berth's)."
  value       = <<-EOT
    ECS_AVAILABLE_LOGGING_DRIVERS=["json-file","awslogs","fluentd"]
    ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST=true
  EOT
}

output "application_log_configuration" {
  description = "The logConfiguration of an application container whose logs berth ships."
  value = {
    logDriver = "fluentd"
    options = {
      "fluentd-address" = "unix:///run/berth/forward.sock"
      tag               = "docker.{{.Name}}"
    }
  }
}

output "task_role_arn" {
  description = "berth's task role."
  value       = aws_iam_role.task.arn
}

output "scale_out_alarm_arn" {
  description = "The alarm on the cluster's free slots of the watched shape."
  value       = aws_cloudwatch_metric_alarm.scale_out.arn
}
