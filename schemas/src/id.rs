//! Identifiers made at the edge: `attr_` / `cmd_` followed by a ULID.
//!
//! A ULID starts with its creation time in milliseconds, so ids sort by creation time and
//! the stores can use them as a tie-breaker in time-ordered indexes. 80 random bits make
//! collisions between edges negligible without any coordination.

use ulid::Ulid;

/// Prefix of every attribution id.
pub const ATTRIBUTION_PREFIX: &str = "attr_";
/// Prefix of every command id.
pub const COMMAND_PREFIX: &str = "cmd_";
/// Length of a ULID in Crockford base32.
const ULID_LEN: usize = 26;

/// A fresh attribution id, e.g. `attr_01JQ3V8W6Y7Z8A9B0C1D2E3F4G`.
pub fn new_attribution_id() -> String {
    prefixed(ATTRIBUTION_PREFIX, Ulid::new())
}

/// `prefix` then the ULID's text, in one allocation (one per click: `format!` with the
/// ULID's `Display` made two).
fn prefixed(prefix: &str, ulid: Ulid) -> String {
    let mut id = String::with_capacity(prefix.len() + ULID_LEN);
    id.push_str(prefix);
    let mut text = [0u8; ULID_LEN];
    id.push_str(ulid.array_to_str(&mut text));
    id
}

/// A fresh command id; the API waits for the verdict recorded under it.
pub fn new_command_id() -> String {
    prefixed(COMMAND_PREFIX, Ulid::new())
}

/// The smallest attribution id made at `at` or later: ids sort by creation time, so
/// `id >= first_attribution_id_at(t)` selects by time on a table sorted by id.
pub fn first_attribution_id_at(at: crate::Timestamp) -> String {
    let millis = u64::try_from(at.as_millis()).unwrap_or(0);
    format!("{ATTRIBUTION_PREFIX}{}", Ulid::from_parts(millis, 0))
}

/// Whether `text` has the shape of an attribution id. Anything else cannot exist, so the
/// API answers 404 without asking the store.
pub fn is_attribution_id(text: &str) -> bool {
    text.strip_prefix(ATTRIBUTION_PREFIX)
        .is_some_and(|ulid| ulid.len() == ULID_LEN && Ulid::from_string(ulid).is_ok())
}

/// When an attribution id was made (the ULID's timestamp), if `text` is one.
pub fn attribution_created_at(text: &str) -> Option<crate::Timestamp> {
    let ulid = Ulid::from_string(text.strip_prefix(ATTRIBUTION_PREFIX)?).ok()?;
    i64::try_from(ulid.timestamp_ms())
        .ok()
        .map(crate::Timestamp::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_unique_and_time_ordered() {
        let first = new_attribution_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = new_attribution_id();
        assert!(is_attribution_id(&first), "{first}");
        assert!(first < second, "{first} !< {second}");
        assert!(new_command_id().starts_with(COMMAND_PREFIX));
        let made = attribution_created_at(&second).unwrap().as_millis();
        assert!((crate::Timestamp::now().as_millis() - made).abs() < 5_000);
        assert_eq!(
            attribution_created_at("cmd_01JQ3V8W6Y7Z8A9B0C1D2E3F4G"),
            None
        );
        let floor = first_attribution_id_at(crate::Timestamp::from_millis(made));
        assert!(
            floor <= second && floor > first,
            "{first} < {floor} <= {second}"
        );
    }

    #[test]
    fn prefixed_ids_read_as_the_ulids_text() {
        let ulid = Ulid::new();
        let id = prefixed(ATTRIBUTION_PREFIX, ulid);
        assert_eq!(id, format!("{ATTRIBUTION_PREFIX}{ulid}"));
        assert_eq!(Ulid::from_string(&id[ATTRIBUTION_PREFIX.len()..]), Ok(ulid));
    }

    #[test]
    fn rejects_foreign_shapes() {
        for text in [
            "attr_a1b2c3",
            "attr_",
            "usr_01JQ3V8W6Y7Z8A9B0C1D2E3F4G",
            "attr_01JQ3V8W6Y7Z8A9B0C1D2E3F4U",
        ] {
            assert!(!is_attribution_id(text), "{text}");
        }
    }
}
