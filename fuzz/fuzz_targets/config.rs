//! A config file is operator input: any text must give a config or a
//! located, readable error, never a panic (the daemon keeps its old config
//! on reload only if parsing returns).
#![no_main]
use hoop::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = std::path::Path::new("fuzz.toml");
    if let Err(e) = Config::parse(text, path) {
        let msg = e.to_string();
        assert!(msg.contains("fuzz.toml"), "error does not name the file: {msg}");
    }
});
