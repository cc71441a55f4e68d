//! `Config::parse` on arbitrary text never panics (its errors, each located at a line, are
//! rendered too), and a config that parses serialises with toml and parses back equal.
//! Saving goes both ways through `config::persist` (which edits only what changed in the
//! operator's text): another config saved into this text, and this config saved into
//! another's, each load back as the config saved.

use lb_userspace::config::{Config, persist};

use super::support::scratch_dir;

/// The other config of the persist checks.
const DEMO: &str = include_str!("../../examples/demo.toml");

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = match Config::parse("fuzz.toml", text) {
        Ok(config) => config,
        Err(e) => {
            // Rendering names file:line for every problem; it must not panic either.
            let shown = e.to_string();
            assert!(shown.contains("fuzz.toml"), "{shown}");
            return;
        }
    };
    let again = toml::to_string(&config)
        .unwrap_or_else(|e| panic!("a parsed config does not serialise: {e}\n{config:#?}"));
    let reparsed = Config::parse("again.toml", &again)
        .unwrap_or_else(|e| panic!("a serialised config does not parse back: {e}\n{again}"));
    assert!(
        reparsed == config,
        "the config changed through toml:\n{again}\n{config:#?}\n{reparsed:#?}"
    );

    let demo = Config::parse("demo.toml", DEMO).expect("examples/demo.toml parses");
    let path = scratch_dir().join("config.toml");
    for (original, saved) in [(text, &demo), (DEMO, &config), (text, &config)] {
        std::fs::write(&path, original).expect("writing the scratch file");
        persist(&path, saved).unwrap_or_else(|e| panic!("persist failed: {e:#}\n{original}"));
        let edited = std::fs::read_to_string(&path).expect("reading the scratch file");
        let loaded = Config::load(&path)
            .unwrap_or_else(|e| panic!("a saved config does not load: {e}\n{edited}"));
        assert!(
            loaded == *saved,
            "saved into\n{original}\nas\n{edited}\nit loads as\n{loaded:#?}\nnot\n{saved:#?}"
        );
    }
}
