//! The README is a contract: its policy-key tables, its metric table and its command synopsis
//! are checked against the code, both ways (nothing documented that does not exist, nothing
//! that exists left undocumented).

use std::{collections::BTreeSet, path::Path};

use clap::CommandFactory;
use resilience_daemon::{cli::Cli, config, fixture, metrics};

const README: &str = include_str!("../../README.md");

/// The lines after `<!-- marker -->` up to the first blank line after the block starts.
fn block(marker: &str) -> Vec<&'static str> {
    let tag = format!("<!-- {marker} -->");
    let mut lines = README.lines().skip_while(|l| l.trim() != tag);
    assert!(lines.next().is_some(), "README has no {tag}");
    lines
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| !l.trim().is_empty())
        .collect()
}

/// The backquoted names in the first column of a markdown table (header and rule skipped).
fn first_column(marker: &str) -> BTreeSet<String> {
    block(marker)
        .iter()
        .skip(2)
        .filter_map(|row| row.trim_start_matches('|').split('|').next())
        .flat_map(|cell| cell.split('`').skip(1).step_by(2))
        .map(str::to_string)
        .collect()
}

/// What the parser accepts in a table: serde names them all when it meets one it does not know.
fn accepted_keys(policy: &str) -> BTreeSet<String> {
    let err = config::parse_str(policy, Path::new("p.toml"))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    let list = err
        .split(", expected ")
        .nth(1)
        .unwrap_or_else(|| panic!("no list of keys in {err:?}"));
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

const DEST: &str = "[[destination]]\nname = \"a\"\nmatch = [\"127.0.0.1:80\"]\n";

#[test]
fn every_policy_key_table_matches_the_parser() {
    let tables = [
        ("daemon", "[daemon]\nunknown_key = 1\n".to_string()),
        ("defaults", "[defaults]\nunknown_key = 1\n".to_string()),
        ("destination", format!("{DEST}unknown_key = 1\n")),
        (
            "breaker",
            format!("{DEST}[destination.breaker]\nunknown_key = 1\n"),
        ),
        (
            "rate_limit",
            format!("{DEST}[destination.rate_limit]\nrate = 1.0\nunknown_key = 1\n"),
        ),
        (
            "bulkhead",
            format!("{DEST}[destination.bulkhead]\nmax_concurrent = 1\nunknown_key = 1\n"),
        ),
        (
            "retry_budget",
            format!("{DEST}[destination.retry_budget]\nunknown_key = 1\n"),
        ),
        (
            "service",
            "[[service]]\nname = \"s\"\nunknown_key = 1\n".to_string(),
        ),
    ];
    for (marker, policy) in tables {
        let documented = first_column(&format!("keys: {marker}"));
        let accepted = accepted_keys(&policy);
        assert_eq!(
            documented, accepted,
            "README's [{marker}] table (left) against what the parser takes (right)"
        );
    }
    // The defaults' breaker takes what a destination's breaker takes.
    assert_eq!(
        accepted_keys("[defaults.breaker]\nunknown_key = 1\n"),
        first_column("keys: breaker")
    );
}

#[test]
fn the_metric_table_matches_what_the_endpoint_serves() {
    let served: BTreeSet<String> = metrics::render(&fixture::fixture())
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect();
    assert!(served.len() > 10, "{served:?}");
    assert_eq!(
        first_column("metrics"),
        served,
        "README (left) against /metrics (right)"
    );
}

/// `resilience run [--config FILE] ...` lines: the subcommand and its long flags.
fn synopsis() -> Vec<(String, BTreeSet<String>)> {
    let lines = block("cli");
    let mut out: Vec<(String, BTreeSet<String>)> = Vec::new();
    for line in lines.iter().filter(|l| !l.starts_with("```")) {
        let text = line.split('#').next().unwrap_or("");
        let mut words = text.split_whitespace().peekable();
        if words.peek() == Some(&"resilience") {
            words.next();
            let name = words.next().expect("a subcommand").to_string();
            out.push((name, BTreeSet::new()));
        }
        let flags = &mut out.last_mut().expect("a first line naming a command").1;
        for w in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')) {
            if let Some(flag) = w.strip_prefix("--") {
                flags.insert(flag.to_string());
            }
        }
    }
    out
}

#[test]
fn the_cli_synopsis_matches_the_commands() {
    let documented = synopsis();
    let cli = Cli::command();
    let real: Vec<(String, BTreeSet<String>)> = cli
        .get_subcommands()
        .filter(|c| c.get_name() != "help")
        .map(|c| {
            let flags = c
                .get_arguments()
                .filter(|a| !a.is_global_set())
                .filter_map(|a| a.get_long())
                // Every client command takes --socket; the README says so once, below.
                .filter(|l| !(*l == "socket" && c.get_name() != "run"))
                .map(str::to_string)
                .collect();
            (c.get_name().to_string(), flags)
        })
        .collect();
    let names = |v: &[(String, BTreeSet<String>)]| {
        v.iter().map(|(n, _)| n.clone()).collect::<BTreeSet<_>>()
    };
    assert_eq!(
        names(&documented),
        names(&real),
        "README (left) against clap (right)"
    );
    for (name, flags) in &real {
        let doc = &documented
            .iter()
            .find(|(n, _)| n == name)
            .expect("checked above")
            .1;
        assert_eq!(
            doc, flags,
            "resilience {name}: README (left) against clap (right)"
        );
    }
    // The flags said once for all commands exist.
    for global in ["--socket", "--log-format"] {
        assert!(README.contains(global));
    }
    assert!(cli
        .get_arguments()
        .any(|a| a.get_long() == Some("log-format")));
}
