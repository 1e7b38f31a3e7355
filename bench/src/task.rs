//! The tasks the benchmark submits: `noop` tasks with ids `<prefix>-<index>`, so every result
//! or event can be traced back to the submission it answers. Raw and relay phases send the same
//! bytes, so every phase moves messages of the same size.

/// The JSON body of task `index` of a run on `prefix`.
pub(crate) fn body(prefix: &str, index: usize) -> Vec<u8> {
    format!(r#"{{"id":"{}","kind":"noop"}}"#, id(prefix, index)).into_bytes()
}

/// The id of task `index` of a run on `prefix`.
pub(crate) fn id(prefix: &str, index: usize) -> String {
    format!("{prefix}-{index}")
}

/// The index of a task id of a run on `prefix`, if it is one of that run's.
pub(crate) fn index(prefix: &str, id: &str) -> Option<usize> {
    id.strip_prefix(prefix)?.strip_prefix('-')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        let body: serde_json::Value = serde_json::from_slice(&body("bench-x-1a2b", 42)).unwrap();
        assert_eq!(body["id"], "bench-x-1a2b-42");
        assert_eq!(body["kind"], "noop");
        assert_eq!(index("bench-x-1a2b", "bench-x-1a2b-42"), Some(42));
        assert_eq!(index("bench-x-1a2b", "bench-y-1a2b-42"), None);
        assert_eq!(index("bench-x-1a2b", "bench-x-1a2b-"), None);
    }
}
