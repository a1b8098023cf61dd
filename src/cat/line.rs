//! One input line of `berth cat`: a JSON object transcoded straight into a msgpack record,
//! its `--time-key` field read as the event time (a number of seconds or RFC 3339 text).

use super::CatError;
use crate::calendar::parse_rfc3339;
use crate::event::{Event, EventTime};
use bytes::Bytes;
use std::fmt;

/// One input line → an event; `None` for a blank line.
///
/// The JSON is transcoded straight into msgpack, keeping the order of keys as written (a
/// `serde_json::Value` would sort them) and building no intermediate tree.
pub(super) fn parse_line(
    line: &str,
    line_no: u64,
    time_key: Option<&str>,
) -> Result<Option<Event>, CatError> {
    let text = line.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let bad = |reason: String| CatError::BadLine { line: line_no, reason };
    if !text.starts_with('{') {
        return Err(bad("not a JSON object".into()));
    }
    let mut record = Vec::with_capacity(text.len());
    let mut time = TimeField::Absent;
    let mut de = serde_json::Deserializer::from_str(text);
    let seed = Transcode { out: &mut record, time_key, time: None, top: Some(&mut time) };
    serde::de::DeserializeSeed::deserialize(seed, &mut de)
        .and_then(|()| de.end())
        .map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let time = match (time_key, time) {
        (None, _) => EventTime::now(),
        (Some(_), TimeField::Valid(t)) => t,
        (Some(key), TimeField::Absent) => return Err(bad(format!("no time field {key:?}"))),
        (Some(key), TimeField::Invalid) => {
            return Err(bad(format!(
                "time field {key:?} is not seconds since the epoch or an RFC 3339 time"
            )))
        }
    };
    Ok(Some(Event { time, record: Bytes::from(record), metadata: Bytes::new() }))
}

/// What the `--time-key` field of a record held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimeField {
    Absent,
    Invalid,
    Valid(EventTime),
}

fn time_from_f64(f: f64) -> Option<EventTime> {
    if !f.is_finite() || f.abs() > 1e15 {
        return None;
    }
    let secs = f.floor();
    // Rounded to whole microseconds: an f64 near today's epoch seconds has no finer
    // precision, and rounding keeps 1.1 from becoming 1.099999904.
    let micros = ((f - secs) * 1e6).round() as u32;
    let (secs, micros) = if micros >= 1_000_000 { (secs + 1.0, 0) } else { (secs, micros) };
    Some(EventTime::new(secs as i64, micros * 1000))
}

/// A serde visitor that writes each JSON value as msgpack into `out`: integers stay
/// integers (u64 or i64), other numbers become float64.
///
/// msgpack puts a container's length before its items and JSON does not say it, so a
/// container's header is inserted in front of its items once they are counted.
struct Transcode<'a> {
    out: &'a mut Vec<u8>,
    /// The key whose top-level value is the event time.
    time_key: Option<&'a str>,
    /// Set when this value is the time field: where to record what it held.
    time: Option<&'a mut TimeField>,
    /// Set only for the record itself (the top-level object): where its time field goes.
    top: Option<&'a mut TimeField>,
}

impl Transcode<'_> {
    fn set_time(&mut self, t: Option<EventTime>) {
        if let Some(slot) = self.time.as_deref_mut() {
            *slot = t.map_or(TimeField::Invalid, TimeField::Valid);
        }
    }
}

// Writing msgpack into a Vec cannot fail; rmp's Result only reports I/O errors.
impl<'de> serde::de::Visitor<'de> for Transcode<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(mut self) -> Result<(), E> {
        self.set_time(None);
        let _ = rmp::encode::write_nil(self.out);
        Ok(())
    }

    fn visit_bool<E>(mut self, v: bool) -> Result<(), E> {
        self.set_time(None);
        let _ = rmp::encode::write_bool(self.out, v);
        Ok(())
    }

    fn visit_u64<E>(mut self, v: u64) -> Result<(), E> {
        self.set_time(i64::try_from(v).ok().map(|s| EventTime::new(s, 0)));
        let _ = rmp::encode::write_uint(self.out, v);
        Ok(())
    }

    fn visit_i64<E>(mut self, v: i64) -> Result<(), E> {
        self.set_time(Some(EventTime::new(v, 0)));
        let _ = rmp::encode::write_sint(self.out, v);
        Ok(())
    }

    fn visit_f64<E>(mut self, v: f64) -> Result<(), E> {
        self.set_time(time_from_f64(v));
        let _ = rmp::encode::write_f64(self.out, v);
        Ok(())
    }

    fn visit_str<E>(mut self, v: &str) -> Result<(), E> {
        self.set_time(parse_rfc3339(v));
        let _ = rmp::encode::write_str(self.out, v);
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.set_time(None);
        let out = self.out;
        let start = out.len();
        let mut n: u32 = 0;
        while seq
            .next_element_seed(Transcode { out: &mut *out, time_key: None, time: None, top: None })?
            .is_some()
        {
            n = n.saturating_add(1);
        }
        let mut header = Vec::with_capacity(5);
        let _ = rmp::encode::write_array_len(&mut header, n);
        out.splice(start..start, header);
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        self.set_time(None);
        let (out, time_key, mut top) = (self.out, self.time_key, self.top);
        let start = out.len();
        let mut n: u32 = 0;
        while let Some(is_time) = map.next_key_seed(Key { out: &mut *out, time_key })? {
            // Only the record's own field is its time, not one nested deeper.
            let time = if is_time { top.as_deref_mut() } else { None };
            let value = Transcode { out: &mut *out, time_key: None, time, top: None };
            map.next_value_seed(value)?;
            n = n.saturating_add(1);
        }
        let mut header = Vec::with_capacity(5);
        let _ = rmp::encode::write_map_len(&mut header, n);
        out.splice(start..start, header);
        Ok(())
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Transcode<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.top.is_some() {
            d.deserialize_map(self)
        } else {
            d.deserialize_any(self)
        }
    }
}

/// A map key: written as a msgpack str; yields whether it is the time key.
struct Key<'a> {
    out: &'a mut Vec<u8>,
    time_key: Option<&'a str>,
}

impl<'de> serde::de::Visitor<'de> for Key<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E>(self, v: &str) -> Result<bool, E> {
        let _ = rmp::encode::write_str(self.out, v);
        Ok(self.time_key == Some(v))
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Key<'_> {
    type Value = bool;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}
