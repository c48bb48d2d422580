//! The README's agent configuration block is agent/examples/agent.toml,
//! verbatim (agent/tests/agent_readme.rs runs that file). Here rather than in
//! the agent's package: the repository's README is outside it, so a test
//! there would not compile from the published package.

const EXAMPLE: &str = include_str!("../../agent/examples/agent.toml");

#[test]
fn the_readme_shows_the_example_file() {
    let readme = include_str!("../../README.md");
    let marker = "<!-- agent-config:";
    let at = readme
        .find(marker)
        .expect("the README's agent-config marker");
    let block = &readme[at..];
    let start = block.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let end = block[start..].find("```").expect("its end") + start;
    assert_eq!(
        &block[start..end],
        EXAMPLE,
        "README and agent/examples/agent.toml differ"
    );
}
