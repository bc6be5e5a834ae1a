//! SOCKS5 parsers run on bytes as they arrive. Beyond not panicking: a
//! parse consumes no more than it was given, and a complete message parses
//! the same from exactly its own bytes, while every shorter prefix asks for
//! more (or fails the same way) rather than yielding something else.
#![no_main]
use hoop::proxy::socks5::{Parsed, parse_greeting, parse_request, parse_user_pass};
use libfuzzer_sys::fuzz_target;

fn check<T: PartialEq + std::fmt::Debug>(data: &[u8], parse: fn(&[u8]) -> Parsed<T>) {
    match parse(data) {
        Ok(Some((v, used))) => {
            assert!(used <= data.len());
            assert_eq!(parse(&data[..used]), Ok(Some((v, used))));
            for cut in 0..used {
                match parse(&data[..cut]) {
                    Ok(None) | Err(_) => {}
                    Ok(Some(other)) => panic!("prefix of {cut} bytes parsed as {other:?}"),
                }
            }
        }
        Ok(None) => {
            for cut in 0..data.len() {
                assert!(!matches!(parse(&data[..cut]), Ok(Some(_))));
            }
        }
        Err(e) => {
            let _ = e.reply();
            assert!(!e.to_string().is_empty());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => check(rest, parse_greeting),
        1 => check(rest, parse_user_pass),
        _ => check(rest, parse_request),
    }
});
