//! Feeds random and mutated plans to the loader: whatever the input, it must return (no panic,
//! no hang), an invalid plan must carry at least one error with a place, and a valid one must
//! serialise and diff cleanly. Deterministic (fixed seed), bounded in count and time.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dop_core::{load_file, load_str, LookupSettings, PlanDiff};

const ITERATIONS: usize = 4000;
const TIME_LIMIT: Duration = Duration::from_secs(60);

/// xorshift64*: small, fast and good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const TOKENS: &[&str] = &[
    ": ",
    "- ",
    "{",
    "}",
    "[",
    "]",
    ",",
    "&a ",
    "*a",
    "<<: *a\n",
    "!!binary ",
    "!ruby/sym ",
    "'",
    "\"",
    "\t",
    "~",
    "yes",
    "0777",
    "0x1g",
    ":sym",
    "include: x.yaml\n",
    "include: ./self.yaml\n",
    "%YAML 1.1\n",
    "---\n",
    "...\n",
    "? ",
    "|\n",
    ">-\n",
    "{i}",
    "range: 1..3\n",
    "/(?=x)/",
    "\u{0}",
    "\u{feff}",
    "\r\n",
    "  ",
    "nodes: all\n",
    "-1",
    "99999999999999999999",
    "null",
    "[]",
    "{}",
];

fn corpus() -> Vec<String> {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/plans");
    let mut texts = Vec::new();
    for dir in ["valid", "invalid"] {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(base.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        entries.sort();
        for path in entries {
            if let Ok(text) = std::fs::read_to_string(&path) {
                texts.push(text);
            }
        }
    }
    assert!(texts.len() > 10);
    texts
}

fn mutate(rng: &mut Rng, text: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for _ in 0..=rng.below(4) {
        if lines.is_empty() {
            lines.push(String::new());
        }
        let at = rng.below(lines.len());
        match rng.below(8) {
            0 => {
                lines.remove(at);
            }
            1 => {
                let copy = lines[at].clone();
                lines.insert(rng.below(lines.len()), copy);
            }
            2 => {
                let other = rng.below(lines.len());
                lines.swap(at, other);
            }
            3 => {
                let line = &mut lines[at];
                let cut = rng.below(line.len() + 1);
                if line.is_char_boundary(cut) {
                    line.insert_str(cut, TOKENS[rng.below(TOKENS.len())]);
                }
            }
            4 => {
                let indent = " ".repeat(rng.below(6));
                lines[at] = format!("{indent}{}", lines[at].trim_start());
            }
            5 => lines.truncate(at),
            6 => {
                let mut bytes = lines[at].clone().into_bytes();
                if !bytes.is_empty() {
                    let i = rng.below(bytes.len());
                    bytes[i] = (rng.next() & 0x7f) as u8;
                }
                lines[at] = String::from_utf8_lossy(&bytes).into_owned();
            }
            _ => lines.insert(at, TOKENS[rng.below(TOKENS.len())].trim_end().to_string()),
        }
    }
    lines.join("\n")
}

/// Checks the loader's contract on one input.
fn check(text: &str, original: Option<&dop_core::Plan>) {
    let loaded = load_str(
        text,
        Some(Path::new("fuzz.yaml")),
        &LookupSettings::default(),
    );
    match &loaded.plan {
        None => {
            let error = loaded
                .errors()
                .next()
                .expect("an invalid plan carries an error");
            assert!(!error.message.is_empty());
            assert!(error.file.is_some());
        }
        Some(plan) => {
            assert!(loaded.errors().next().is_none());
            let json = serde_json::to_string(plan).expect("serialises");
            let back: dop_core::Plan = serde_json::from_str(&json).expect("deserialises");
            assert_eq!(&back, plan);
            if let Some(original) = original {
                let diff = PlanDiff::between(original, plan);
                let _ = diff.to_string();
            }
        }
    }
}

#[test]
fn mutated_plans_never_panic() {
    let corpus = corpus();
    let originals: Vec<Option<dop_core::Plan>> = corpus
        .iter()
        .map(|t| load_str(t, None, &LookupSettings::default()).plan)
        .collect();
    let mut rng = Rng(0x5eed_d09e_2026);
    let start = Instant::now();
    let mut runs = 0;
    let mut valid = 0;
    while runs < ITERATIONS && start.elapsed() < TIME_LIMIT {
        let pick = rng.below(corpus.len());
        let input = if rng.below(10) == 0 {
            // Pure noise now and then.
            (0..rng.below(400))
                .map(|_| char::from((rng.next() % 96 + 32) as u8))
                .collect()
        } else {
            mutate(&mut rng, &corpus[pick])
        };
        let result = catch_unwind(AssertUnwindSafe(|| check(&input, originals[pick].as_ref())));
        if result.is_err() {
            panic!("the loader failed its contract on this input:\n{input}");
        }
        if load_str(&input, None, &LookupSettings::default()).is_valid() {
            valid += 1;
        }
        runs += 1;
    }
    assert!(runs >= 100, "only {runs} inputs in the time limit");
    // The mutations must not be so destructive that nothing valid is ever produced.
    assert!(valid > 0, "no mutated plan was valid in {runs} runs");
}

#[test]
fn mutated_include_directives_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(42);
    let parts = [
        "a.yaml",
        "b.yaml",
        "self.yaml",
        "missing.yaml",
        "sub/../a.yaml",
        "/dev/null",
        ".",
    ];
    for i in 0..200 {
        for name in ["a.yaml", "b.yaml", "self.yaml"] {
            let mut text = String::new();
            for _ in 0..rng.below(4) {
                let target = parts[rng.below(parts.len())];
                let indent = " ".repeat(rng.below(3) * 2);
                let dash = if rng.below(3) == 0 { "- " } else { "" };
                text.push_str(&format!("{indent}{dash}include: {target}\n"));
                text.push_str(&format!("k{}: v\n", rng.below(5)));
            }
            std::fs::write(dir.path().join(name), &text).unwrap();
        }
        let loaded =
            catch_unwind(|| load_file(&dir.path().join("self.yaml"), &LookupSettings::default()));
        let loaded = loaded.unwrap_or_else(|_| panic!("iteration {i} panicked"));
        assert!(
            loaded.errors().next().is_some(),
            "iteration {i}: these are never valid plans"
        );
    }
}
