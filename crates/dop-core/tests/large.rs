//! Large plans: what the speed-ups of loading (issue 28) must not change. Each test compares
//! with a result computed the plain way, never with a time.

use dop_core::{load_str, LookupSettings};

/// A plan of `count` baremetal nodes `n00000`… with `extra` appended to its `nodes` mapping.
fn plan_with_nodes(count: usize, extra: &str) -> String {
    let mut text = String::from("name: big\ninfrastructures:\n  lab: {type: baremetal}\nnodes:\n");
    for i in 0..count {
        text.push_str(&format!("  n{i:05}.example.com: {{infrastructure: lab}}\n"));
    }
    text.push_str(extra);
    text
}

#[test]
fn a_name_defined_twice_among_many_nodes_is_reported_once_where_it_repeats() {
    // `n00003.example.com` again as a Ruby symbol: the same name, written differently.
    let text = plan_with_nodes(2_000, "  :n00003.example.com: {infrastructure: lab}\n");
    let loaded = load_str(&text, None, &LookupSettings::default());
    let messages: Vec<String> = loaded.errors().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        ["error: nodes.n00003.example.com: 'n00003.example.com' is defined twice in 'nodes'"]
    );
    assert_eq!(loaded.errors().next().unwrap().line, Some(2_005));
}
