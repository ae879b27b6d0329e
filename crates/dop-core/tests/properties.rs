//! Property-based tests (proptest): plans generated from their parts load to the model they
//! describe, a plan's diff with itself is empty and one changed node is exactly what a diff
//! reports, node filters select what a simple model of them says, and no text makes the loader
//! panic. Case counts are bounded (proptest's defaults or less), shrinking finds small failures.

use std::collections::BTreeMap;

use dop_core::{
    load_str, ChangeKind, FilterFlags, LookupSettings, NodeFacts, NodeFilter, Plan, PlanDiff,
    Resolver,
};
use proptest::prelude::*;

const ROLES: [&str; 3] = ["web", "db", "app"];

/// Node name → role index. Names are quoted in the plan: unquoted, `on` or `no` would be YAML
/// 1.1 booleans (refused with a clear error, as the original's YAML parser read them too).
fn nodes() -> impl Strategy<Value = BTreeMap<String, usize>> {
    prop::collection::btree_map("[a-z][a-z0-9]{0,6}", 0..ROLES.len(), 1..12)
}

fn plan_text(nodes: &BTreeMap<String, usize>, fqdn_of: impl Fn(&str) -> String) -> String {
    let mut text = String::from("name: prop\ninfrastructures:\n  lab: {type: baremetal}\nnodes:\n");
    for name in nodes.keys() {
        text.push_str(&format!(
            "  '{name}': {{infrastructure: lab, fqdn: {}}}\n",
            fqdn_of(name)
        ));
    }
    // Configuration is looked up by certname (the fqdn), as Puppet's Hiera would.
    text.push_str("configuration:\n  nodes:\n");
    for (name, role) in nodes {
        let fqdn = fqdn_of(name);
        text.push_str(&format!("    '{fqdn}': {{role: {}}}\n", ROLES[*role]));
    }
    text.push_str("steps:\n  - name: s\n    nodes: all\n    command: dummy\n");
    text
}

fn load(text: &str) -> Plan {
    let loaded = load_str(text, None, &LookupSettings::default());
    let errors: Vec<String> = loaded.errors().map(|d| d.to_string()).collect();
    loaded
        .plan
        .unwrap_or_else(|| panic!("invalid: {errors:?}\n{text}"))
}

fn domain(name: &str) -> String {
    format!("{name}.example.com")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_generated_plan_loads_to_the_nodes_and_roles_it_describes(nodes in nodes()) {
        let plan = load(&plan_text(&nodes, domain));
        let settings = LookupSettings::default();
        let resolver = Resolver::new(&plan, &settings).unwrap();
        prop_assert_eq!(resolver.len(), nodes.len());
        for i in 0..resolver.len() {
            let name = resolver.name(i);
            prop_assert_eq!(resolver.role(i), ROLES[nodes[name]]);
            prop_assert_eq!(&plan.node(name).unwrap().fqdn, &domain(name));
        }
        prop_assert!(PlanDiff::between(&plan, &plan).is_empty());
    }

    #[test]
    fn a_diff_reports_exactly_the_node_that_changed(
        nodes in nodes(),
        pick in any::<prop::sample::Index>(),
        how in 0..3u8,
    ) {
        let old = load(&plan_text(&nodes, domain));
        let victim = pick.get(&nodes.keys().cloned().collect::<Vec<_>>()).clone();
        let (new, expected) = match how {
            0 => (
                plan_text(&nodes, |n| if n == victim { format!("moved.{n}.example.org") } else { domain(n) }),
                ChangeKind::Changed,
            ),
            1 if nodes.len() > 1 => {
                let mut fewer = nodes.clone();
                fewer.remove(&victim);
                (plan_text(&fewer, domain), ChangeKind::Removed)
            }
            _ => {
                let mut more = nodes.clone();
                let added = format!("{victim}x9");
                more.entry(added.clone()).or_insert(0);
                let diff = PlanDiff::between(&old, &load(&plan_text(&more, domain)));
                if nodes.contains_key(&added) {
                    prop_assert!(diff.nodes.is_empty());
                    return Ok(());
                }
                prop_assert_eq!(diff.nodes.len(), 1, "{:?}", diff);
                prop_assert_eq!(&diff.nodes[0].name, &added);
                prop_assert_eq!(diff.nodes[0].kind, ChangeKind::Added);
                return Ok(());
            }
        };
        let diff = PlanDiff::between(&old, &load(&new));
        prop_assert_eq!(diff.nodes.len(), 1, "{:?}", diff);
        prop_assert_eq!(&diff.nodes[0].name, &victim);
        prop_assert_eq!(diff.nodes[0].kind, expected);
        prop_assert!(diff.infrastructures.is_empty() && diff.steps.is_empty() && diff.plan.is_empty());
    }

    #[test]
    fn filters_select_what_the_names_and_roles_say(
        nodes in nodes(),
        include in prop::collection::vec(any::<prop::sample::Index>(), 0..5),
        exclude in prop::collection::vec(any::<prop::sample::Index>(), 0..3),
        role in prop::option::of(0..ROLES.len()),
    ) {
        let plan = load(&plan_text(&nodes, domain));
        let settings = LookupSettings::default();
        let resolver = Resolver::new(&plan, &settings).unwrap();
        let names: Vec<String> = nodes.keys().cloned().collect();
        let include: Vec<String> = include.iter().map(|i| i.get(&names).clone()).collect();
        let exclude: Vec<String> = exclude.iter().map(|i| i.get(&names).clone()).collect();
        let (inc, exc) = (include.join(","), exclude.join(","));
        let flags = FilterFlags {
            nodes: (!include.is_empty()).then_some(inc.as_str()),
            roles: role.map(|r| ROLES[r]),
            exclude_nodes: (!exclude.is_empty()).then_some(exc.as_str()),
            ..FilterFlags::default()
        };
        let selection = NodeFilter::from_flags(&flags).unwrap().select(&resolver);
        let selected: Vec<&str> = selection.nodes.iter().map(|&i| resolver.name(i)).collect();

        // The model: named nodes in the order named, then the role's nodes in plan order
        // (all nodes when nothing is included), first occurrence kept, excludes removed.
        let mut model: Vec<&str> = Vec::new();
        let by_role: Vec<&str> = (0..resolver.len())
            .filter(|&i| role.is_some_and(|r| resolver.role(i) == ROLES[r]))
            .map(|i| resolver.name(i))
            .collect();
        let everything: Vec<&str> = (0..resolver.len()).map(|i| resolver.name(i)).collect();
        let included: Vec<&str> = if include.is_empty() && role.is_none() {
            everything
        } else {
            include.iter().map(String::as_str).chain(by_role).collect()
        };
        for name in included {
            if !exclude.iter().any(|e| e == name) && !model.contains(&name) {
                model.push(name);
            }
        }
        prop_assert_eq!(selected, model);
    }

    #[test]
    fn no_text_makes_the_loader_panic(text in "(\\PC|\n| {1,4}|: |- |\\[|\\]|\\{|\\}|&a |\\*a|nodes|steps|name){0,80}") {
        let loaded = load_str(&text, None, &LookupSettings::default());
        if !loaded.is_valid() {
            prop_assert!(loaded.errors().next().is_some(), "invalid without an error: {:?}", text);
        }
    }
}
