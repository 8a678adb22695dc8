//! `weft shard analyze`: balance, movement, lookup time and memory of the placements.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde_json::{json, Value};

#[derive(Subcommand)]
pub(crate) enum ShardCmd {
    /// Balance, movement, lookup time and memory of partitioning algorithms.
    Analyze {
        /// ring, rendezvous, jump, maglev, bounded, slots, or all (comma-separated list allowed).
        #[arg(long, default_value = "all")]
        algo: String,
        /// Number of nodes.
        #[arg(long, default_value_t = 10)]
        nodes: usize,
        /// Number of keys placed.
        #[arg(long, default_value_t = 100_000)]
        keys: usize,
        /// Measure movement when adding this many nodes.
        #[arg(long, conflicts_with = "remove")]
        add: Option<usize>,
        /// Measure movement when removing this many nodes.
        #[arg(long)]
        remove: Option<usize>,
        /// Node weights, comma-separated, one per node.
        #[arg(long, value_delimiter = ',')]
        weights: Vec<u32>,
        /// Virtual nodes per unit of weight (ring, bounded).
        #[arg(long, default_value_t = 160)]
        vnodes: u32,
        /// ε of bounded loads.
        #[arg(long, default_value_t = 0.25)]
        epsilon: f64,
        /// Write an SVG chart of the per-node load here.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `weft shard` command.
pub(crate) fn shard(cmd: ShardCmd) -> Result<()> {
    let ShardCmd::Analyze {
        algo,
        nodes,
        keys,
        add,
        remove,
        weights,
        vnodes,
        epsilon,
        plot,
        json,
    } = cmd;
    shard_analyze(
        &algo,
        nodes,
        keys,
        add,
        remove,
        &weights,
        vnodes,
        epsilon,
        plot.as_deref(),
        json,
    )
}

#[allow(clippy::too_many_arguments)]
fn shard_analyze(
    algo: &str,
    nodes: usize,
    keys: usize,
    add: Option<usize>,
    remove: Option<usize>,
    weights: &[u32],
    vnodes: u32,
    epsilon: f64,
    plot: Option<&std::path::Path>,
    json_out: bool,
) -> Result<()> {
    use weft_shard::analyze::{analyze, svg, Change, Settings, ALGORITHMS};
    if nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    if !weights.is_empty() && weights.len() != nodes {
        bail!(
            "--weights has {} values but --nodes is {nodes}: give one weight per node",
            weights.len()
        );
    }
    let ns: Vec<weft_shard::Node> = (0..nodes)
        .map(|i| {
            weft_shard::Node::weighted(format!("node-{i}"), weights.get(i).copied().unwrap_or(1))
        })
        .collect();
    let algos: Vec<&str> = if algo == "all" {
        ALGORITHMS.to_vec()
    } else {
        algo.split(',').map(str::trim).collect()
    };
    let change = match (add, remove) {
        (Some(m), _) => Some(Change::Add(m)),
        (_, Some(m)) => Some(Change::Remove(m)),
        _ => None,
    };
    let settings = Settings {
        vnodes,
        epsilon,
        keys,
    };
    let mut results = Vec::new();
    for a in algos {
        results.push(analyze(a, &ns, change, &settings)?);
    }
    if json_out {
        let v: Vec<Value> = results
            .iter()
            .map(|r| {
                json!({
                    "algo": r.algo, "max_over_mean": r.max_over_mean, "stddev_over_mean": r.stddev_over_mean,
                    "moved": r.moved, "ideal": r.ideal, "lookup_ns": r.lookup_ns, "memory_bytes": r.memory_bytes,
                    "loads": r.loads.iter().map(|(n, l)| json!({"node": n, "keys": l})).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", Value::Array(v));
    } else {
        println!(
            "{nodes} nodes, {keys} keys{}",
            match change {
                Some(Change::Add(m)) => format!(", adding {m}"),
                Some(Change::Remove(m)) => format!(", removing {m}"),
                None => String::new(),
            }
        );
        println!(
            "{:<11} {:>9} {:>12} {:>9} {:>9} {:>8} {:>10} {:>12}",
            "algorithm", "max/mean", "stddev/mean", "moved", "ideal", "ratio", "lookup", "memory"
        );
        for r in &results {
            let (moved, ideal, ratio) = match (r.moved, r.ideal) {
                (Some(m), Some(i)) => (
                    format!("{:.2}%", m * 100.0),
                    format!("{:.2}%", i * 100.0),
                    format!("{:.2}", if i > 0.0 { m / i } else { 1.0 }),
                ),
                _ => ("-".into(), "-".into(), "-".into()),
            };
            println!(
                "{:<11} {:>9.3} {:>12.3} {:>9} {:>9} {:>8} {:>8.1}ns {:>10}KiB",
                r.algo,
                r.max_over_mean,
                r.stddev_over_mean,
                moved,
                ideal,
                ratio,
                r.lookup_ns,
                r.memory_bytes / 1024
            );
        }
    }
    if let Some(p) = plot {
        std::fs::write(p, svg(&results))
            .with_context(|| format!("cannot write {}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}
