//! What ECS can still place on this host, computed from what runs here: pure functions over
//! plain views of the ECS agent's tasks and Docker's containers, table-tested.
//!
//! ECS accounts a task at its task-level size where it has one (per resource: a task may
//! set `cpu` and leave `memory` to its containers), else at the sum over its containers —
//! each container's memory reservation, else its hard limit; its cpu units. A task holds
//! its resources from placement until it is STOPPED. Daemon tasks hold resources too; they
//! only do not count as *work* (for idleness and scale-in protection).

/// A container of a task, as Docker reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerSize {
    /// `HostConfig.CpuShares`. ECS gives a container of `cpu = 0` (or unset) the Docker
    /// minimum, 2 shares, which count as 0 units.
    pub cpu_shares: u64,
    /// `HostConfig.MemoryReservation`, bytes (0: none).
    pub memory_reservation: u64,
    /// `HostConfig.Memory`, bytes (0: none).
    pub memory_limit: u64,
}

/// The smallest CPU shares Docker accepts; ECS uses it for "no cpu".
pub const MIN_CPU_SHARES: u64 = 2;
const MIB: u64 = 1 << 20;

impl ContainerSize {
    /// CPU units ECS accounts for this container.
    pub fn cpu_units(&self) -> u64 {
        if self.cpu_shares <= MIN_CPU_SHARES {
            0
        } else {
            self.cpu_shares
        }
    }

    /// Memory MiB ECS accounts for it: the soft reservation, else the hard limit.
    pub fn memory_mib(&self) -> u64 {
        let bytes =
            if self.memory_reservation > 0 { self.memory_reservation } else { self.memory_limit };
        bytes.div_ceil(MIB)
    }
}

/// Task-level sizes, where the task has them (read from its cgroup).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskSize {
    pub cpu_units: Option<u64>,
    pub memory_mib: Option<u64>,
}

/// CPU units and memory MiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Resources {
    pub cpu_units: u64,
    pub memory_mib: u64,
}

/// What ECS accounts for one task.
pub fn task_reservation(task_level: TaskSize, containers: &[ContainerSize]) -> Resources {
    Resources {
        cpu_units: task_level
            .cpu_units
            .unwrap_or_else(|| containers.iter().map(ContainerSize::cpu_units).sum()),
        memory_mib: task_level
            .memory_mib
            .unwrap_or_else(|| containers.iter().map(ContainerSize::memory_mib).sum()),
    }
}

/// Registered minus reserved, never below zero (a task placed while the agent restarted
/// can briefly make the sum exceed what is registered).
pub fn free(registered: Resources, reserved: impl IntoIterator<Item = Resources>) -> Resources {
    let (cpu, mem) =
        reserved.into_iter().fold((0u64, 0u64), |(c, m), r| (c + r.cpu_units, m + r.memory_mib));
    Resources {
        cpu_units: registered.cpu_units.saturating_sub(cpu),
        memory_mib: registered.memory_mib.saturating_sub(mem),
    }
}

/// How many tasks of `shape` still fit: `min(floor(free_cpu / cpu), floor(free_mem / mem))`;
/// a dimension the shape does not use (0) does not limit it. A shape of zeros fits none.
pub fn schedulable(free: Resources, shape: Resources) -> u64 {
    let by = |free: u64, need: u64| free.checked_div(need);
    match (by(free.cpu_units, shape.cpu_units), by(free.memory_mib, shape.memory_mib)) {
        (Some(c), Some(m)) => c.min(m),
        (Some(n), None) | (None, Some(n)) => n,
        (None, None) => 0,
    }
}

/// The ECS agent's task states that still hold resources: everything before STOPPED.
pub fn holds_resources(known_status: &str) -> bool {
    !matches!(known_status, "STOPPED" | "DELETED")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(cpu_shares: u64, reservation_mib: u64, limit_mib: u64) -> ContainerSize {
        ContainerSize {
            cpu_shares,
            memory_reservation: reservation_mib * MIB,
            memory_limit: limit_mib * MIB,
        }
    }

    fn r(cpu_units: u64, memory_mib: u64) -> Resources {
        Resources { cpu_units, memory_mib }
    }

    #[test]
    fn a_container_counts_its_shares_and_its_reservation_else_its_limit() {
        for (size, cpu, mem) in [
            (c(2, 0, 0), 0, 0), // cpu 0: Docker's minimum shares, no memory
            (c(0, 0, 0), 0, 0), // shares unset
            (c(256, 128, 512), 256, 128),
            (c(1024, 0, 2048), 1024, 2048),
            (c(10, 300, 0), 10, 300),
        ] {
            assert_eq!((size.cpu_units(), size.memory_mib()), (cpu, mem), "{size:?}");
        }
        let odd = ContainerSize { memory_limit: MIB + 1, ..Default::default() };
        assert_eq!(odd.memory_mib(), 2, "a partial MiB is a MiB");
    }

    #[test]
    fn task_level_sizes_win_per_resource() {
        let cs = [c(256, 128, 512), c(2, 0, 256), c(512, 0, 0)];
        for (level, want) in [
            (TaskSize::default(), r(768, 384)),
            (TaskSize { cpu_units: Some(1024), memory_mib: None }, r(1024, 384)),
            (TaskSize { cpu_units: None, memory_mib: Some(2048) }, r(768, 2048)),
            (TaskSize { cpu_units: Some(4096), memory_mib: Some(8192) }, r(4096, 8192)),
        ] {
            assert_eq!(task_reservation(level, &cs), want, "{level:?}");
        }
        assert_eq!(task_reservation(TaskSize::default(), &[]), r(0, 0));
    }

    #[test]
    fn free_is_registered_minus_reserved_never_negative() {
        let reg = r(2048, 7680);
        assert_eq!(free(reg, []), reg);
        assert_eq!(free(reg, [r(1024, 2048), r(512, 512)]), r(512, 5120));
        assert_eq!(free(reg, [r(4096, 512)]), r(0, 7168));
    }

    #[test]
    fn schedulable_is_the_tighter_resource() {
        for (free, shape, n) in [
            (r(2048, 7680), r(1024, 2048), 2), // cpu-bound
            (r(8192, 3000), r(1024, 2048), 1), // memory-bound
            (r(1023, 100_000), r(1024, 2048), 0),
            (r(4096, 16_000), r(4096, 15_722), 1),
            (r(0, 4096), r(0, 1024), 4), // a shape without cpu
            (r(4096, 0), r(1024, 0), 4), // a shape without memory
            (r(4096, 4096), r(0, 0), 0), // an empty shape fits none
        ] {
            assert_eq!(schedulable(free, shape), n, "{free:?} {shape:?}");
        }
    }

    #[test]
    fn tasks_hold_resources_until_stopped() {
        for (s, holds) in [
            ("PENDING", true),
            ("ACTIVATING", true),
            ("RUNNING", true),
            ("DEACTIVATING", true),
            ("STOPPING", true),
            ("STOPPED", false),
            ("DELETED", false),
        ] {
            assert_eq!(holds_resources(s), holds, "{s}");
        }
    }
}
