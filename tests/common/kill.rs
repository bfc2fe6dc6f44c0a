//! Kill-and-resume scaffolding: a child `lfgcl` run SIGKILLed at a random moment, on a schedule
//! whose seed is printed so that a failure can be replayed.
#![allow(dead_code)]

use rand::rngs::StdRng;
use rand::SeedableRng;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A kill schedule seeded from the clock; the seed is printed (to replay a failing schedule).
pub fn kill_schedule() -> StdRng {
    let seed: u64 = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    eprintln!("kill schedule seed {seed}");
    StdRng::seed_from_u64(seed)
}

/// Starts `cmd` with its output discarded, lets it run `ms` milliseconds, SIGKILLs it when it is
/// still running and waits for it. True when it was killed.
pub fn run_then_kill(cmd: &mut Command, ms: u64) -> bool {
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(ms));
    let running = child.try_wait().unwrap().is_none();
    if running {
        child.kill().unwrap();
    }
    child.wait().unwrap();
    running
}
