//! Keeps the wire-floor benchmark (`examples/wire_floor.rs`) working: at a
//! small size every stream answers every exchange of every round and the
//! server's threads are found and measured. No wall-clock bounds.

#[path = "../examples/wire_floor.rs"]
mod wire_floor;

use clap::Parser;

#[test]
fn every_round_completes_and_its_server_cpu_is_counted() {
    // In turn, and two responses at once before their two ACKs.
    for batch in ["1", "2"] {
        let args = wire_floor::Args::parse_from(["wire_floor", "--streams", "50", "--rounds", "3", "--exchanges", "2", "--batch", batch, "--ack-bytes", "300"]);
        let mut reported = Vec::new();
        let rounds = wire_floor::run(&args, wire_floor::Clients::InProcess, |i, _| reported.push(i)).unwrap();
        assert_eq!(reported, [1, 2, 3], "batch {batch}");
        // 50 streams × 2 writes and reads a round take some CPU on the server's
        // threads: zero would mean the threads were not found.
        assert!(rounds.iter().all(|round| !round.cpu.is_zero()), "{rounds:?}");
    }
}
