//! Runs every fuzz target on stable Rust for a bounded time: the seeds (`fuzz/seeds/NAME/`,
//! where crashes found before are kept, and `fuzz/corpus/NAME/` if a libFuzzer run left one)
//! and random mutations of them. Not coverage-guided like `cargo fuzz run` (nightly), but it
//! runs in every CI build. A panic, or an input that takes over 20 s, is written to
//! `fuzz/artifacts/NAME/` and fails the run with its path; add the file to
//! `fuzz/seeds/NAME/` to keep it as a regression input.
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --bin smoke -- [SECONDS_PER_TARGET] [NAME...]
//! SMOKE_SEED=N  repeats a run's mutations (the seed is printed)
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An input that runs longer than this is a hang.
const HANG: Duration = Duration::from_secs(20);
/// Largest mutated input.
const MAX_LEN: usize = 64 << 10;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Interesting bytes and integers that parsers trip on.
const MAGIC: &[&[u8]] = &[
    &[0],
    &[0xff],
    &[0x7f],
    &[0x80],
    &[0xff, 0xff, 0xff, 0xff],
    &[0, 0, 0, 0],
    &[0xff, 0xff, 0xff, 0x7f],
    b"\r\n",
    b"\r\n\r\n",
    b"0\r\n\r\n",
    b"Content-Length: ",
    b"Transfer-Encoding: chunked",
    b"[[route]]",
    b"=",
    b"\"",
];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut v = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(8) {
        match rng.below(8) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(v.len() + 1);
                let m = MAGIC[rng.below(MAGIC.len())];
                v.splice(i..i, m.iter().copied());
            }
            3 if !v.is_empty() => {
                let i = rng.below(v.len());
                let n = rng.below(v.len() - i + 1);
                v.drain(i..i + n);
            }
            4 if !v.is_empty() => v.truncate(rng.below(v.len())),
            5 if !v.is_empty() => {
                // Repeat a slice (lengths, counts and nesting that grow).
                let i = rng.below(v.len());
                let n = 1 + rng.below((v.len() - i).min(64));
                let piece = v[i..i + n].to_vec();
                for _ in 0..1 + rng.below(16) {
                    v.splice(i..i, piece.iter().copied());
                }
            }
            6 => {
                let other = &seeds[rng.below(seeds.len())];
                let at = rng.below(other.len() + 1);
                v.extend_from_slice(&other[at..]);
            }
            _ => {
                let n = rng.below(32);
                for _ in 0..n {
                    v.push(rng.next() as u8);
                }
            }
        }
    }
    v.truncate(MAX_LEN);
    v
}

fn seeds(root: &Path, name: &str) -> Vec<Vec<u8>> {
    let mut out = vec![Vec::new(), b"\0\0\0\0\0\0\0\0".to_vec()];
    for dir in ["seeds", "corpus"] {
        let Ok(rd) = std::fs::read_dir(root.join(dir).join(name)) else {
            continue;
        };
        for e in rd.flatten() {
            if let Ok(b) = std::fs::read(e.path()) {
                out.push(b);
            }
        }
    }
    out
}

fn save(root: &Path, name: &str, kind: &str, input: &[u8]) -> PathBuf {
    let dir = root.join("artifacts").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let h = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let path = dir.join(format!("{kind}-{h:016x}"));
    std::fs::write(&path, input).unwrap();
    path
}

/// Prints a failing input in hex (its first 64 KiB) so that it survives in a CI log even when
/// the machine's files do not: `xxd -r -p` turns it back into the file, to be kept under
/// `fuzz/seeds/NAME/` as a regression input.
fn print_input(path: &Path) {
    let bytes = std::fs::read(path).unwrap_or_default();
    let shown = &bytes[..bytes.len().min(64 << 10)];
    let hex: String = shown.iter().map(|b| format!("{b:02x}")).collect();
    eprintln!("input ({} bytes, hex):\n{hex}", bytes.len());
}

/// One target for `secs`: executions, or the file of the input that failed.
fn run(
    root: &Path,
    name: &str,
    f: fn(&[u8]),
    secs: f64,
    seed: u64,
    watch: &Watch,
) -> Result<u64, PathBuf> {
    let seeds = seeds(root, name);
    let mut rng = Rng(seed | 1);
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut n = 0u64;
    let mut i = 0;
    while Instant::now() < end {
        // The seeds themselves first, then mutations.
        let input = if i < seeds.len() {
            i += 1;
            seeds[i - 1].clone()
        } else {
            mutate(&mut rng, &seeds)
        };
        watch.start(name, &input);
        let r = std::panic::catch_unwind(|| f(&input));
        watch.done();
        if r.is_err() {
            return Err(save(root, name, "crash", &input));
        }
        n += 1;
    }
    Ok(n)
}

/// What each worker runs now, for the hang watchdog.
#[derive(Default)]
struct Watch {
    started_ms: AtomicU64,
    busy: AtomicBool,
    current: Mutex<(String, Vec<u8>)>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

impl Watch {
    fn start(&self, name: &str, input: &[u8]) {
        *self.current.lock().unwrap() = (name.to_string(), input.to_vec());
        self.started_ms.store(now_ms(), Ordering::SeqCst);
        self.busy.store(true, Ordering::SeqCst);
    }
    fn done(&self) {
        self.busy.store(false, Ordering::SeqCst);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let secs: f64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(60.0);
    let only: Vec<&String> = args.iter().skip(1).collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf();
    let seed: u64 = std::env::var("SMOKE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(now_ms);
    println!("fuzz smoke: {secs} s per target, SMOKE_SEED={seed}");
    // Panics are caught and reported by input; their messages still go to stderr once.
    let targets: Vec<(&str, fn(&[u8]))> = weft_fuzz::TARGETS
        .iter()
        .copied()
        .filter(|(n, _)| only.is_empty() || only.iter().any(|o| o.as_str() == *n))
        .collect();
    if targets.is_empty() {
        eprintln!(
            "no target named {only:?}; targets: {:?}",
            weft_fuzz::TARGETS.iter().map(|t| t.0).collect::<Vec<_>>()
        );
        std::process::exit(2);
    }
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(targets.len());
    let queue = Arc::new(Mutex::new(targets));
    let failed = Arc::new(AtomicBool::new(false));
    let watches: Vec<Arc<Watch>> = (0..workers).map(|_| Arc::new(Watch::default())).collect();
    {
        let (watches, root) = (watches.clone(), root.clone());
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            for w in &watches {
                let age = now_ms().saturating_sub(w.started_ms.load(Ordering::SeqCst));
                if w.busy.load(Ordering::SeqCst) && age > HANG.as_millis() as u64 {
                    let (name, input) = w.current.lock().unwrap().clone();
                    let path = save(&root, &name, "hang", &input);
                    eprintln!("{name}: an input ran over {HANG:?}: {}", path.display());
                    print_input(&path);
                    std::process::exit(1);
                }
            }
        });
    }
    let mut handles = Vec::new();
    for (k, w) in watches.into_iter().enumerate() {
        let (queue, failed, root) = (queue.clone(), failed.clone(), root.clone());
        handles.push(std::thread::spawn(move || loop {
            let Some((name, f)) = queue.lock().unwrap().pop() else {
                return;
            };
            let t = Instant::now();
            match run(&root, name, f, secs, seed.wrapping_add(k as u64 * 7919), &w) {
                Ok(n) => println!(
                    "{name}: {n} inputs in {:.1} s, no failure",
                    t.elapsed().as_secs_f64()
                ),
                Err(path) => {
                    eprintln!("{name}: a panic; the input is in {}", path.display());
                    print_input(&path);
                    failed.store(true, Ordering::SeqCst);
                }
            }
        }));
    }
    for h in handles {
        let _ = h.join();
    }
    if failed.load(Ordering::SeqCst) {
        std::process::exit(1);
    }
}
