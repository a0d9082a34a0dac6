//! What notices cost: 1 worker draining the same traffic with notices off
//! and on, back to back in each run (the order alternating from run to
//! run), CPU per 1,000 events of the worker and of its PostgreSQL backends,
//! and the ratio on/off of each run.

use std::path::Path;

use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use session_guard::Settings;

use crate::drain::{Drains, side};
use crate::options::BenchArgs;
use crate::report::{Row, median};
use crate::services::reset_log;

/// The rows: each setting's CPU per 1,000 events and rate, and the ratios.
pub async fn rows(
    settings: &Settings,
    args: &BenchArgs,
    worker: &Path,
    events: &[Vec<u8>],
) -> anyhow::Result<Vec<Row>> {
    let pool = session_guard::db::connect_and_migrate(&settings.database).await?;
    let (mut off, mut on) = (settings.clone(), settings.clone());
    off.notices.enabled = false;
    on.notices.enabled = true;
    let setups = [("notices off", &off), ("notices on", &on)];
    let (connection, publisher) = side(settings).await?;
    // A queue bound like an app's, so notices are routed (as the revokes
    // are); it keeps what it gets, to count them.
    let setup = connection.create_channel().await?;
    let tap = setup
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    setup
        .queue_bind(
            tap.name().clone(),
            settings.amqp.notices_exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let per_1000 = 1000.0 / events.len() as f64;
    let runs = args.runs.max(1);
    let [mut worker_cpu, mut postgres_cpu, mut rates] = <[[Vec<f64>; 2]; 3]>::default();
    let (mut total_ratio, mut worker_ratio) = (Vec::new(), Vec::new());
    let mut notices = Vec::new();
    for run in 1..=runs {
        let order = if run % 2 == 1 { [0, 1] } else { [1, 0] };
        for i in order {
            let (label, settings) = setups[i];
            let drains = Drains::on(settings, &pool, worker, events, &connection, &publisher);
            reset_log(&pool).await?;
            drains.fill().await?;
            let drain = drains.through_workers(1).await?;
            let (w, p) = (
                drain.worker_cpu_ms * per_1000,
                drain.postgres_cpu_ms * per_1000,
            );
            worker_cpu[i].push(w);
            postgres_cpu[i].push(p);
            rates[i].push(drain.rate);
            println!(
                "run {run}/{runs}: 1 worker, {label}: {:.0} events/s, CPU per 1,000 events \
                 {w:.1} ms worker, {p:.1} ms PostgreSQL",
                drain.rate
            );
            if i == 1 {
                let purged = setup
                    .queue_purge(tap.name().clone(), Default::default())
                    .await?;
                notices.push(f64::from(purged));
            }
        }
        let total = |i: usize| worker_cpu[i][run - 1] + postgres_cpu[i][run - 1];
        total_ratio.push(total(1) / total(0));
        worker_ratio.push(worker_cpu[1][run - 1] / worker_cpu[0][run - 1]);
        println!(
            "run {run}/{runs}: notices on over off: CPU per event {:.3} (worker {:.3}), \
             rate {:.3}; {:.0} notices",
            total_ratio[run - 1],
            worker_ratio[run - 1],
            rates[1][run - 1] / rates[0][run - 1],
            notices[run - 1]
        );
    }
    let _ = connection.close(200, "done".into()).await;
    pool.close().await;
    let mut rows = Vec::new();
    for (i, (label, _)) in setups.iter().enumerate() {
        rows.push(Row {
            what: format!("1 worker, {label}: CPU per 1,000 events"),
            figure: format!(
                "{:.1} ms worker + {:.1} ms PostgreSQL",
                median(&worker_cpu[i]),
                median(&postgres_cpu[i])
            ),
            note: format!("median of {runs} runs; {:.0} events/s", median(&rates[i])),
        });
    }
    rows.push(Row {
        what: "notices on over off: CPU per event".into(),
        figure: format!("{:.3}", median(&total_ratio)),
        note: format!(
            "worker and PostgreSQL, median of {runs} runs' ratios (worker alone {:.3}); \
             {:.0} notices per drain",
            median(&worker_ratio),
            median(&notices)
        ),
    });
    Ok(rows)
}
