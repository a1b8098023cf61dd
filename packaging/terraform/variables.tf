variable "cluster_name" {
  type        = string
  description = "The ECS cluster whose container instances run berth."
}

variable "auto_scaling_group_name" {
  type        = string
  description = "The Auto Scaling group of those instances (the lifecycle hook and the scale-out policy go on it)."
}

variable "image" {
  type        = string
  description = "berth's image in your registry (scripts/build-image, then push)."
}

variable "log_retention_days" {
  type        = number
  default     = 30
  description = "Retention of berth's own log group and of the log groups its sink creates."
  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1827, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a retention CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1827 or 3653)."
  }
}

variable "log_kms_key_arn" {
  type        = string
  default     = null
  description = "A KMS key to encrypt berth's own and its capacity log groups with (its policy must let CloudWatch Logs use it); null: CloudWatch Logs' own encryption."
}

variable "scale_out_task_shape" {
  type        = string
  default     = "default"
  description = "The task shape whose free slots are watched (the TaskShape dimension of SchedulableTasks): usually your largest common task, the one that fails to place first."
  validation {
    condition     = can(regex("^[A-Za-z0-9._-]{1,100}$", var.scale_out_task_shape))
    error_message = "scale_out_task_shape: 1 to 100 of A-Z a-z 0-9 . _ -"
  }
}

variable "scale_out_task_cpu" {
  type        = number
  default     = 1024
  description = "CPU units of one task of that shape (0 does not limit it)."
}

variable "scale_out_task_memory" {
  type        = number
  default     = 2048
  description = "Memory (MiB) of one task of that shape (0 does not limit it; not both 0)."
  validation {
    condition     = var.scale_out_task_memory >= 0
    error_message = "scale_out_task_memory must not be negative."
  }
}

variable "scale_out_min_free_tasks" {
  type        = number
  default     = 2
  description = "Add an instance while fewer tasks of that shape than this fit in the whole cluster (for two consecutive minutes)."
  validation {
    condition     = var.scale_out_min_free_tasks >= 1
    error_message = "scale_out_min_free_tasks must be at least 1."
  }
}

variable "tags" {
  type        = map(string)
  default     = {}
  description = "Tags for every resource that takes them."
}
