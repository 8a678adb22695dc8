//! The log thread's scheduling policy.
//!
//! The log thread wakes for every group commit: when records arrive and when the disk
//! completes a write. Under the default policy each of those wake-ups may preempt the thread
//! that queued the records (the etcd API's connection thread, say), which then waits in the
//! run queue with the replies it was about to send: with 64 clients on 2 cores the
//! connection thread was preempted 0.12–0.18 times per put, almost always by the log thread
//! (`perf record -e sched:sched_switch`). `SCHED_BATCH` is the kernel's policy for threads
//! that should not cause "extra preemptions (between the workload's tasks)" (sched(7)): same
//! nice value, same share of the CPU, no wake-up preemption. The log thread still runs at
//! once on an idle core; on a busy one it waits for the running thread's next block or
//! tick, and the records that arrive meanwhile join its write (docs/runs/etcd-api.md, "the log
//! thread stops preempting the connection thread"). The snapshot thread, which the log thread starts, inherits the policy:
//! background work that should not preempt request handling either.

use std::io;

/// Puts the calling thread under `SCHED_BATCH`, keeping its nice value. Needs no privilege.
/// A thread under any other policy than the default one (an operator's `chrt`: real-time,
/// idle) keeps it.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn batch_policy_for_this_thread() -> io::Result<()> {
    // SAFETY: no arguments but pid 0, the calling thread.
    let current = unsafe { libc::sched_getscheduler(0) };
    if current != libc::SCHED_OTHER {
        return if current < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        };
    }
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid, initialized `sched_param` that outlives the call, which
    // only reads it; pid 0 names the calling thread.
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Other systems: nothing to do.
#[cfg(not(target_os = "linux"))]
pub fn batch_policy_for_this_thread() -> io::Result<()> {
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    /// `policy` and `nice` of the calling thread, from `/proc/thread-self/stat` (fields 41 and
    /// 19, counted after the command name).
    fn policy_and_nice() -> (i64, i64) {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // `rest` starts at field 3 (state).
        (f[41 - 3].parse().unwrap(), f[19 - 3].parse().unwrap())
    }

    #[test]
    fn the_thread_runs_under_sched_batch_with_its_nice_value() {
        std::thread::spawn(|| {
            let (policy, nice) = policy_and_nice();
            assert_eq!(policy, 0, "starts under SCHED_OTHER");
            super::batch_policy_for_this_thread().unwrap();
            assert_eq!(policy_and_nice(), (libc::SCHED_BATCH as i64, nice));
        })
        .join()
        .unwrap();
        // Only that thread changed.
        assert_eq!(policy_and_nice().0, 0);
    }

    /// A policy an operator chose (here `SCHED_IDLE`, which needs no privilege) is kept.
    #[test]
    #[allow(unsafe_code)]
    fn a_thread_under_another_policy_keeps_it() {
        std::thread::spawn(|| {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: as in `batch_policy_for_this_thread`.
            assert_eq!(
                unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) },
                0
            );
            super::batch_policy_for_this_thread().unwrap();
            assert_eq!(policy_and_nice().0, libc::SCHED_IDLE as i64);
        })
        .join()
        .unwrap();
    }
}
