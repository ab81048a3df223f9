//! What a server costs in memory: the proportional set size of its
//! postmaster and every process below it, read from /proc. Shared memory
//! (shared_buffers) is split among the processes that map it, so summing
//! PSS counts it once.

use std::path::Path;

/// Memory of process `pid` and its descendants; None when it is gone.
/// Processes whose smaps are not readable (another user's, for a daemon
/// that is not root) count their resident set size instead.
pub fn process_tree_bytes(pid: u32) -> Option<u64> {
    let mut total = process_bytes(pid)?;
    let mut stack = children(pid);
    while let Some(child) = stack.pop() {
        total += process_bytes(child).unwrap_or(0);
        stack.extend(children(child));
    }
    Some(total)
}

fn process_bytes(pid: u32) -> Option<u64> {
    let proc = Path::new("/proc").join(pid.to_string());
    if let Ok(rollup) = std::fs::read_to_string(proc.join("smaps_rollup"))
        && let Some(kib) = field_kib(&rollup, "Pss:")
    {
        return Some(kib * 1024);
    }
    let statm = std::fs::read_to_string(proc.join("statm")).ok()?;
    let resident: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(resident * u64::try_from(page).unwrap_or(4096))
}

/// The value of a `Name:   123 kB` line.
fn field_kib(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

fn children(pid: u32) -> Vec<u32> {
    let tasks = Path::new("/proc").join(pid.to_string()).join("task");
    let Ok(entries) = std::fs::read_dir(tasks) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Lowers the CPU and I/O priority of a process tree's root; processes it
/// starts later (PostgreSQL backends) inherit it. Best effort.
pub fn lower_priority(pid: u32) {
    // SAFETY: setpriority on a pid we started; failure only leaves the
    // priority as it was.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, pid, 10) };
    if rc != 0 {
        tracing::debug!(
            pid,
            "cannot lower the priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_tree_has_memory_and_children_count() {
        let me = std::process::id();
        let alone = process_tree_bytes(me).expect("this process exists");
        assert!(alone > 1 << 20, "{alone}");
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let found = children(me).contains(&child.id());
        let child_alone = process_tree_bytes(child.id()).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(found, "the child is listed under its parent");
        assert!(child_alone > 0);
        assert_eq!(process_tree_bytes(u32::MAX - 1), None);
    }

    #[test]
    fn field_parsing() {
        let text = "Rss:     2048 kB\nPss:      512 kB\n";
        assert_eq!(field_kib(text, "Pss:"), Some(512));
        assert_eq!(field_kib(text, "Swap:"), None);
    }
}
