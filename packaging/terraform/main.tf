# berth as an ECS daemon service on an existing cluster and Auto Scaling group: the same
# stack as packaging/cloudformation/berth.yaml (tests/packaging.rs keeps the two, and the
# policies of packaging/iam/, in step).

data "aws_partition" "current" {}
data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

locals {
  partition = data.aws_partition.current.partition
  region    = data.aws_region.current.name
  account   = data.aws_caller_identity.current.account_id
  group_arn = "arn:${local.partition}:autoscaling:${local.region}:${local.account}:autoScalingGroup:*:autoScalingGroupName/${var.auto_scaling_group_name}"

  # The image's config (packaging/berth-container.toml), its stdout sink turned into a
  # CloudWatch Logs sink (one log group per task family, one stream per container), the
  # drain on, and capacity publishing the watched shape's free slots as EMF (the alarm
  # below) with scale-in protection while tasks run. The interval stays at 60 s: the
  # alarm's period.
  environment = [
    { name = "BERTH_LOG", value = "info" },
    { name = "BERTH_SINK__0__NAME", value = "cloudwatch" },
    { name = "BERTH_SINK__0__TYPE", value = "cloudwatch_logs" },
    { name = "BERTH_SINK__0__REGION", value = "${local.region}" },
    { name = "BERTH_SINK__0__LOG_GROUP", value = "/ecs/${var.cluster_name}/{ecs_task_definition_family}" },
    { name = "BERTH_SINK__0__LOG_STREAM", value = "{ecs_task_id}/{ecs_container_name}" },
    { name = "BERTH_SINK__0__MESSAGE_KEY", value = "log" },
    { name = "BERTH_SINK__0__RETENTION_DAYS", value = "${var.log_retention_days}" },
    { name = "BERTH_CAPACITY__ENABLED", value = "true" },
    { name = "BERTH_CAPACITY__TASK_SHAPES", value = "[{ name = \"${var.scale_out_task_shape}\", cpu = ${var.scale_out_task_cpu}, memory = ${var.scale_out_task_memory} }]" },
    { name = "BERTH_CAPACITY__PUBLISH__CLOUDWATCH_EMF", value = "true" },
    { name = "BERTH_CAPACITY__PUBLISH__EMF_LOG_GROUP", value = "${aws_cloudwatch_log_group.capacity.name}" },
    { name = "BERTH_CAPACITY__SCALE_IN_PROTECTION__ENABLED", value = "true" },
    { name = "BERTH_DRAIN__ENABLED", value = "true" },
    { name = "BERTH_DRAIN__LIFECYCLE_HOOK_NAME", value = "${aws_autoscaling_lifecycle_hook.drain.name}" },
    { name = "BERTH_DRAIN__AUTO_SCALING_GROUP_NAME", value = "${var.auto_scaling_group_name}" },
  ]
}

# berth's own logs (awslogs). Sending them through berth would lose them exactly when berth
# is what fails.
resource "aws_cloudwatch_log_group" "daemon" {
  #checkov:skip=CKV_AWS_338:the operator sets the retention of a daemon's own logs (log_retention_days, 30 days by default, as in the CloudFormation template)
  name              = "/berth/${var.cluster_name}/daemon"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.log_kms_key_arn
  tags              = var.tags
}

# The carrier of capacity's EMF metrics (CloudWatch extracts them; the events themselves
# are not needed for long). Per cluster, under the /berth/capacity prefix the capacity
# policy allows.
resource "aws_cloudwatch_log_group" "capacity" {
  #checkov:skip=CKV_AWS_338:only the carrier of EMF metrics, which CloudWatch keeps (15 months); a year of the events would cost and serve nothing
  name              = "/berth/capacity/${var.cluster_name}"
  retention_in_days = 3
  kms_key_id        = var.log_kms_key_arn
  tags              = var.tags
}

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

# Pulls the image and writes berth's own logs.
resource "aws_iam_role" "execution" {
  name_prefix        = "berth-execution-"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

# What berth calls: the sink's writes, and packaging/iam/berth-capacity-policy.json and
# berth-drain-policy.json statement for statement, the ARNs narrowed to this account,
# region and group where IAM allows.
resource "aws_iam_role" "task" {
  name_prefix        = "berth-task-"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "sink" {
  statement {
    sid    = "CloudWatchLogsSink"
    effect = "Allow"
    actions = [
      "logs:CreateLogGroup",
      "logs:CreateLogStream",
      "logs:PutLogEvents",
      "logs:PutRetentionPolicy",
    ]
    resources = [
      "arn:${local.partition}:logs:${local.region}:${local.account}:log-group:/ecs/${var.cluster_name}/*",
      "arn:${local.partition}:logs:${local.region}:${local.account}:log-group:/ecs/${var.cluster_name}/*:log-stream:*",
    ]
  }
}

data "aws_iam_policy_document" "capacity" {
  statement {
    sid       = "DescribeThisContainerInstance"
    effect    = "Allow"
    actions   = ["ecs:DescribeContainerInstances"]
    resources = ["arn:${local.partition}:ecs:${local.region}:${local.account}:container-instance/*"]
  }
  statement {
    sid       = "CapacityAsEcsAttributes"
    effect    = "Allow"
    actions   = ["ecs:PutAttributes"]
    resources = ["arn:${local.partition}:ecs:${local.region}:${local.account}:container-instance/*"]
  }
  statement {
    # DescribeAutoScalingInstances supports no resource-level permissions.
    sid       = "FindThisInstancesGroup"
    effect    = "Allow"
    actions   = ["autoscaling:DescribeAutoScalingInstances"]
    resources = ["*"]
  }
  statement {
    sid       = "ScaleInProtection"
    effect    = "Allow"
    actions   = ["autoscaling:SetInstanceProtection"]
    resources = [local.group_arn]
  }
  statement {
    sid    = "CapacityMetricsAsEmf"
    effect = "Allow"
    actions = [
      "logs:CreateLogGroup",
      "logs:CreateLogStream",
      "logs:PutLogEvents",
    ]
    resources = [
      "arn:${local.partition}:logs:${local.region}:${local.account}:log-group:/berth/capacity*",
      "arn:${local.partition}:logs:${local.region}:${local.account}:log-group:/berth/capacity*:log-stream:*",
    ]
  }
}

data "aws_iam_policy_document" "drain" {
  statement {
    sid       = "DrainThisContainerInstance"
    effect    = "Allow"
    actions   = ["ecs:UpdateContainerInstancesState"]
    resources = ["arn:${local.partition}:ecs:${local.region}:${local.account}:container-instance/*"]
  }
  statement {
    # DescribeLifecycleHooks supports no resource-level permissions.
    sid       = "FindTerminatingHooks"
    effect    = "Allow"
    actions   = ["autoscaling:DescribeLifecycleHooks"]
    resources = ["*"]
  }
  statement {
    sid    = "HoldAndReleaseTermination"
    effect = "Allow"
    actions = [
      "autoscaling:RecordLifecycleActionHeartbeat",
      "autoscaling:CompleteLifecycleAction",
    ]
    resources = [local.group_arn]
  }
}

resource "aws_iam_role_policy" "sink" {
  name   = "berth-sink"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.sink.json
}

resource "aws_iam_role_policy" "capacity" {
  name   = "berth-capacity"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.capacity.json
}

resource "aws_iam_role_policy" "drain" {
  name   = "berth-drain"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.drain.json
}

resource "aws_ecs_task_definition" "berth" {
  family                   = "berth"
  network_mode             = "host"
  requires_compatibilities = ["EC2"]
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn
  tags                     = var.tags

  container_definitions = jsonencode([
    {
      name              = "berth"
      image             = var.image
      essential         = true
      # Soft: what ECS sets aside for placement. Fresh peaks (docs/performance.md,
      # 2026-12-03): 26-28 MiB null sink, 58-70 CloudWatch Logs, 63-84 Elasticsearch,
      # 64-87 with a 1.1 GiB backlog.
      memoryReservation = 128
      cpu               = 128
      # The ECS maximum: a drain in progress finishes after SIGTERM.
      stopTimeout = 120
      # berth writes only to the host directories below.
      readonlyRootFilesystem = true
      environment            = local.environment
      mountPoints = [
        { sourceVolume = "berth-run", containerPath = "/run/berth" },
        { sourceVolume = "berth-state", containerPath = "/var/lib/berth" },
        { sourceVolume = "docker-sock", containerPath = "/var/run/docker.sock", readOnly = true },
        { sourceVolume = "host-cgroup", containerPath = "/sys/fs/cgroup", readOnly = true },
        { sourceVolume = "machine-id", containerPath = "/etc/machine-id", readOnly = true },
      ]
      healthCheck = {
        command  = ["CMD", "/usr/bin/berth", "health", "--config", "/etc/berth/berth.toml"]
        interval = 30
        timeout  = 5
        retries  = 3
      }
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          "awslogs-group"         = aws_cloudwatch_log_group.daemon.name
          "awslogs-region"        = local.region
          "awslogs-stream-prefix" = "berth"
        }
      }
    }
  ])

  volume {
    name      = "berth-run"
    host_path = "/run/berth"
  }
  volume {
    name      = "berth-state"
    host_path = "/var/lib/berth"
  }
  volume {
    name      = "docker-sock"
    host_path = "/var/run/docker.sock"
  }
  volume {
    name      = "host-cgroup"
    host_path = "/sys/fs/cgroup"
  }
  # The buffer's identity is bound to the host's machine id (docs/configuration.md).
  volume {
    name      = "machine-id"
    host_path = "/etc/machine-id"
  }
}

# One berth on every container instance; ECS stops daemon tasks last when an instance
# drains.
resource "aws_ecs_service" "berth" {
  name                = "berth"
  cluster             = var.cluster_name
  task_definition     = aws_ecs_task_definition.berth.arn
  scheduling_strategy = "DAEMON"
  launch_type         = "EC2"
  tags                = var.tags
}

# The hook berth's drain heart-beats and completes. 1,800 s: a berth that dies mid-drain
# holds the instance at most 30 minutes; 100 x 1,800 s covers the drain's 48 h maximum.
resource "aws_autoscaling_lifecycle_hook" "drain" {
  name                   = "berth-drain"
  autoscaling_group_name = var.auto_scaling_group_name
  lifecycle_transition   = "autoscaling:EC2_INSTANCE_TERMINATING"
  heartbeat_timeout      = 1800
  default_result         = "CONTINUE"
}

# Scale out before a task fails to place (docs/capacity.md): the cluster's Sum of
# SchedulableTasks for the shape, one data point per host per 60 s interval, below the
# minimum for 2 periods adds an instance. No data (berth stopped everywhere, figures stale)
# is INSUFFICIENT_DATA, never a scale-out to the group's maximum on no evidence.
resource "aws_autoscaling_policy" "scale_out" {
  name                      = "berth-scale-out-${var.scale_out_task_shape}"
  autoscaling_group_name    = var.auto_scaling_group_name
  policy_type               = "StepScaling"
  adjustment_type           = "ChangeInCapacity"
  estimated_instance_warmup = 180
  step_adjustment {
    metric_interval_upper_bound = 0
    scaling_adjustment          = 1
  }
}

resource "aws_cloudwatch_metric_alarm" "scale_out" {
  alarm_name          = "berth-${var.cluster_name}-${var.scale_out_task_shape}-headroom"
  alarm_description   = "Fewer than ${var.scale_out_min_free_tasks} tasks of shape ${var.scale_out_task_shape} fit in cluster ${var.cluster_name} (berth capacity): add an instance."
  namespace           = "Berth"
  metric_name         = "SchedulableTasks"
  dimensions          = { ClusterName = var.cluster_name, TaskShape = var.scale_out_task_shape }
  statistic           = "Sum"
  period              = 60
  evaluation_periods  = 2
  datapoints_to_alarm = 2
  threshold           = var.scale_out_min_free_tasks
  comparison_operator = "LessThanThreshold"
  treat_missing_data  = "missing"
  alarm_actions       = [aws_autoscaling_policy.scale_out.arn]
  tags                = var.tags
}
