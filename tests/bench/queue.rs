//! Scenario 7: a service asked for now, handed to a waiting worker. Through the operator's
//! work queue, and through kube-runtime's scheduler, which the controllers built on
//! kube-runtime (and the operator before) hand their passes through. No cluster: requests
//! are sent from another thread at uneven offsets, 3 to 4 ms apart, so that each finds the
//! worker waiting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::runtime::scheduler::{scheduler, ScheduleRequest};
use perennial::work_queue::{Next, WorkQueue};
use serde_json::json;

use super::{percentile, write_results};

const REQUESTS: usize = 2000;

/// Calls `send` REQUESTS times from a thread of its own, with the time of each call.
fn send_at_uneven_offsets(mut send: impl FnMut(Instant) + Send + 'static) {
    std::thread::spawn(move || {
        for i in 0..REQUESTS as u64 {
            std::thread::sleep(Duration::from_micros(3000 + (i * 7919) % 1000));
            send(Instant::now());
        }
    });
}

fn us(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run with make bench"]
async fn bench_queue_hand_off() {
    let (tx, rx) = futures::channel::mpsc::unbounded();
    send_at_uneven_offsets(move |now| {
        let _ = tx.unbounded_send(ScheduleRequest {
            message: now,
            run_at: now.into(),
        });
    });
    let mut theirs = Vec::new();
    let mut handed = std::pin::pin!(scheduler(rx));
    while theirs.len() < REQUESTS {
        let Some(sent) = handed.next().await else {
            break;
        };
        theirs.push(sent.elapsed());
    }

    let queue = Arc::new(WorkQueue::default());
    let asks = queue.clone();
    send_at_uneven_offsets(move |now| asks.add(now, "bench"));
    let mut ours = Vec::new();
    while ours.len() < REQUESTS {
        let Some((sent, _)) = queue.next().await else {
            break;
        };
        ours.push(sent.elapsed());
        queue.finish(&sent, Next::OnChange);
    }

    let mut rows = Vec::new();
    println!("\nA service asked for now -> handed to a waiting worker ({REQUESTS} requests each)");
    println!("{:<28} {:>10} {:>10} {:>10}", "queue", "p50", "p90", "p99");
    for (name, mut waits) in [
        ("perennial work queue", ours),
        ("kube-runtime scheduler", theirs),
    ] {
        waits.sort();
        let p = |q| us(percentile(&waits, q));
        println!(
            "{:<28} {:>8}us {:>8}us {:>8}us",
            name,
            p(0.5),
            p(0.9),
            p(0.99)
        );
        rows.push(json!({
            "queue": name, "requests": waits.len(),
            "p50_us": p(0.5), "p90_us": p(0.9), "p99_us": p(0.99),
        }));
    }
    write_results("queue_hand_off", json!(rows));
}
