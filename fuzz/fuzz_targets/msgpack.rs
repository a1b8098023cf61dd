//! Arbitrary bytes through the one msgpack reader, compared with `rmpv`: the header walk
//! (`value_len`), `Reader::skip`, `Reader::skip_nested` and a token-by-token read must agree
//! with each other on where a value ends, and with `rmpv::decode::read_value` on whether
//! there is a whole value and how long it is (rmpv reads the reserved 0xc1 as nil where the
//! reader refuses it, so inputs holding it are compared by the reader's parts only). The
//! normal test suite runs the same comparison as a proptest (`src/msgpack/tests.rs`).
#![no_main]

use berth::msgpack::{value_len, Error, Extent, Reader, Token};
use libfuzzer_sys::fuzz_target;

/// Nesting rmpv may recurse into (its default, 1024, can overflow a small stack).
const RMPV_DEPTH: usize = 256;

/// Reads one value token by token, iteratively; its length.
fn read_tokens(b: &[u8]) -> Result<usize, Error> {
    let mut r = Reader::new(b);
    let mut pending: u64 = 1;
    while pending > 0 {
        pending -= 1;
        match r.read()? {
            Token::Array(n) => pending += u64::from(n),
            Token::Map(n) => pending += 2 * u64::from(n),
            _ => {}
        }
    }
    Ok(r.position())
}

fuzz_target!(|data: &[u8]| {
    let walked = value_len(data, usize::MAX);
    let skipped = Reader::new(data).skip();
    let tokens = read_tokens(data);
    let _ = Reader::new(data).skip_nested::<8>();
    let _ = berth::msgpack::json::write_record_json(&mut Vec::new(), data);
    let _ = berth::msgpack::str_body(data);
    match tokens {
        Ok(n) => {
            assert_eq!(walked, Ok(Extent::Complete(n)));
            assert_eq!(skipped, Ok(0..n));
            // No 0xc1 inside: rmpv reads a value of the same length (unless it nests past
            // the depth given to rmpv, whose reader recurses).
            let mut rest = data;
            if rmpv::decode::read_value_with_max_depth(&mut rest, RMPV_DEPTH).is_ok() {
                assert_eq!(data.len() - rest.len(), n);
            }
        }
        Err(Error::Truncated { offset }) => {
            assert_eq!(offset, data.len());
            assert!(matches!(walked, Ok(Extent::Incomplete { at_least }) if at_least > data.len()));
            assert_eq!(skipped, Err(Error::Truncated { offset }));
            if !data.contains(&0xc1) {
                assert!(
                    rmpv::decode::read_value_with_max_depth(&mut &data[..], RMPV_DEPTH).is_err()
                );
            }
        }
        Err(Error::Reserved { offset }) => {
            assert_eq!(data[offset], 0xc1);
            assert_eq!(walked, Err(Error::Reserved { offset }));
        }
        Err(e) => panic!("{e}"),
    }
});
