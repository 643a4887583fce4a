//! `strata watch`: follows a batch to its end — a progress bar per zone on a terminal, one line per
//! change otherwise, one JSON object per event with `--output json` — then a per-zone summary.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use strata_client::{Client, ClientError};
use strata_proto::v1::{self as pb, watch_batch_response::Event};

use crate::render::{self, Output};

/// Times a broken stream is opened again before giving up.
const REOPEN_ATTEMPTS: u32 = 5;

/// The objects of a batch by zone, as the watch sees them.
#[derive(Debug, Default)]
struct Board {
    objects: HashMap<String, (String, pb::ObjectState)>,
}

impl Board {
    fn counts(&self) -> BTreeMap<String, BTreeMap<pb::ObjectState, u32>> {
        let mut out: BTreeMap<String, BTreeMap<pb::ObjectState, u32>> = BTreeMap::new();
        for (zone, state) in self.objects.values() {
            *out.entry(zone.clone())
                .or_default()
                .entry(*state)
                .or_default() += 1;
        }
        out
    }
}

fn is_finished(state: pb::ObjectState) -> bool {
    use pb::ObjectState as S;
    matches!(
        state,
        S::Loaded | S::SkippedFresh | S::Dead | S::UpstreamFailed | S::Cancelled
    )
}

fn is_terminal(state: pb::BatchState) -> bool {
    !matches!(state, pb::BatchState::Running | pb::BatchState::Unspecified)
}

/// Progress bars, one per zone (only on a terminal, in text mode).
struct Bars {
    multi: MultiProgress,
    bars: BTreeMap<String, ProgressBar>,
}

impl Bars {
    fn new() -> Self {
        Self {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stdout()),
            bars: BTreeMap::new(),
        }
    }

    fn update(&mut self, board: &Board) {
        let style = ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos:>6}/{len:<6} {msg}")
            .expect("valid template")
            .progress_chars("=> ");
        for (zone, counts) in board.counts() {
            let bar = self.bars.entry(zone.clone()).or_insert_with(|| {
                let bar = self.multi.add(ProgressBar::new(0));
                bar.set_style(style.clone());
                bar.set_prefix(zone.clone());
                bar
            });
            let total: u32 = counts.values().sum();
            let done: u32 = counts
                .iter()
                .filter(|(s, _)| is_finished(**s))
                .map(|(_, n)| n)
                .sum();
            bar.set_length(u64::from(total));
            bar.set_position(u64::from(done));
            let get = |s: pb::ObjectState| counts.get(&s).copied().unwrap_or(0);
            bar.set_message(format!(
                "running {} · retry {} · dead {}",
                get(pb::ObjectState::Running) + get(pb::ObjectState::Ready),
                get(pb::ObjectState::RetryWait),
                get(pb::ObjectState::Dead) + get(pb::ObjectState::UpstreamFailed)
            ));
        }
    }

    fn finish(&self) {
        for bar in self.bars.values() {
            bar.finish();
        }
    }
}

/// Watches `batch_id` to its end and returns the final batch.
pub async fn watch(client: &Client, batch_id: &str, output: Output) -> anyhow::Result<pb::Batch> {
    let started = Instant::now();
    let tty = output == Output::Text && std::io::stdout().is_terminal();
    let mut bars = tty.then(Bars::new);
    let mut board = Board::default();
    let mut reopened = 0;
    let final_batch = 'watch: loop {
        let mut stream = client.watch(batch_id).await?;
        let mut fresh = true;
        let mut snapshot_batch: Option<pb::Batch> = None;
        loop {
            let message = match stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(status) => {
                    let error = ClientError::Status { status };
                    if reopened >= REOPEN_ATTEMPTS {
                        return Err(error.into());
                    }
                    eprintln!("strata: watch interrupted ({error}); watching again");
                    break;
                }
            };
            if output == Output::Json {
                println!(
                    "{}",
                    serde_json::to_string(&render::to_json(&message)).expect("JSON prints")
                );
            }
            match message.event {
                Some(Event::Snapshot(snapshot)) => {
                    if fresh {
                        // A (re)opened stream starts over from its snapshot.
                        board.objects.clear();
                        fresh = false;
                    }
                    if snapshot.batch.is_some() {
                        snapshot_batch = snapshot.batch;
                    }
                    for o in snapshot.objects {
                        let state = o.state();
                        board.objects.insert(o.object_id, (o.zone, state));
                    }
                    if snapshot.last_part
                        && let Some(batch) = snapshot_batch.take_if(|b| is_terminal(b.state()))
                    {
                        break 'watch batch;
                    }
                }
                Some(Event::ObjectChanged(change)) => {
                    if output == Output::Text && !tty {
                        println!("{}", change_line(&change));
                    }
                    let to = change.to_state();
                    board.objects.insert(change.object_id, (change.zone, to));
                }
                Some(Event::BatchChanged(change)) => {
                    if let Some(batch) = change.batch
                        && is_terminal(batch.state())
                    {
                        break 'watch batch;
                    }
                }
                Some(Event::Resync(_)) => fresh = true,
                None => {}
            }
            if let Some(bars) = bars.as_mut() {
                bars.update(&board);
            }
        }
        // The stream ended before the batch did (a restarted control plane, a proxy timeout):
        // open it again; its snapshot brings the board up to date.
        reopened += 1;
        if reopened > REOPEN_ATTEMPTS {
            anyhow::bail!("the watch of {batch_id} kept breaking; see `strata status {batch_id}`");
        }
        tokio::time::sleep(Duration::from_millis(200 * u64::from(reopened))).await;
    };
    if let Some(bars) = bars.as_mut() {
        bars.update(&board);
        bars.finish();
    }
    if output == Output::Text {
        println!("{}", final_summary(&final_batch, started.elapsed()));
        if final_batch.state() != pb::BatchState::Succeeded {
            print_dead_letters(client, batch_id).await;
        }
    }
    Ok(final_batch)
}

/// The first dead letters of a batch that did not succeed: what failed and why.
async fn print_dead_letters(client: &Client, batch_id: &str) {
    const SHOWN: usize = 10;
    let Ok(r) = client
        .list_dead_letters(pb::ListDeadLettersRequest {
            batch_id: batch_id.into(),
            page_size: SHOWN as u32,
            ..Default::default()
        })
        .await
    else {
        return;
    };
    for d in r.dead_letters.iter().take(SHOWN) {
        println!(
            "dead: {} ({}) after {} attempt(s), {} descendant(s) blocked: {}",
            d.object_id, d.zone, d.attempts, d.blocked_descendant_count, d.last_error
        );
    }
    if !r.next_page_token.is_empty() {
        println!("more: strata dlq list {batch_id}");
    }
}

/// One line per object change (plain text mode).
fn change_line(c: &pb::ObjectStateChanged) -> String {
    let mut line = format!(
        "{}  {:<8} {:<14} {} → {}",
        render::time(c.at.as_ref()),
        c.object_id,
        c.zone,
        render::object_state(c.from_state()),
        render::object_state(c.to_state()),
    );
    if c.attempt > 0 {
        line.push_str(&format!("  attempt {}", c.attempt));
    }
    if !c.agent_id.is_empty() {
        line.push_str(&format!("  by {}", c.agent_id));
    }
    if !c.error.is_empty() {
        line.push_str(&format!("  error: {}", c.error));
    } else if !c.reason.is_empty() {
        line.push_str(&format!("  ({})", c.reason));
    }
    line
}

/// The per-zone table that ends a watch (from the batch's own counts).
pub fn final_summary(batch: &pb::Batch, elapsed: Duration) -> String {
    let mut zones: BTreeMap<&str, BTreeMap<pb::ObjectState, u32>> = BTreeMap::new();
    for c in &batch.counts {
        *zones
            .entry(c.zone.as_str())
            .or_default()
            .entry(c.state())
            .or_default() += c.count;
    }
    let columns = [
        pb::ObjectState::Loaded,
        pb::ObjectState::SkippedFresh,
        pb::ObjectState::Dead,
        pb::ObjectState::UpstreamFailed,
        pb::ObjectState::Cancelled,
    ];
    let mut header = vec!["zone", "total"];
    header.extend(columns.iter().map(|s| render::object_state(*s)));
    let mut totals = vec![0u32; columns.len() + 1];
    let mut rows: Vec<Vec<String>> = zones
        .iter()
        .map(|(zone, counts)| {
            let total: u32 = counts.values().sum();
            totals[0] += total;
            let mut row = vec![(*zone).to_owned(), total.to_string()];
            for (i, s) in columns.iter().enumerate() {
                let n = counts.get(s).copied().unwrap_or(0);
                totals[i + 1] += n;
                row.push(n.to_string());
            }
            row
        })
        .collect();
    let mut all = vec!["all".to_owned()];
    all.extend(totals.iter().map(u32::to_string));
    rows.push(all);
    format!(
        "batch {} {} (watched {:.1} s)\n{}",
        batch.batch_id,
        render::batch_state(batch.state()),
        elapsed.as_secs_f64(),
        render::table(&header, &rows)
    )
}
