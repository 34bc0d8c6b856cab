//! Recording a report into the benchmark document (docs/BENCHMARKS.md), between its
//! markers, keeping the analysis written around it.

use std::fs;
use std::path::Path;

use super::Result;

/// Replaces the block between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in `doc` with
/// `report`, or appends a `## HEADING` section holding it. The rest of the document (the
/// analysis written around each block) is kept.
pub fn record_section(doc: &Path, name: &str, heading: &str, report: &str) -> Result<()> {
    let begin = format!("<!-- {name}:begin -->");
    let end = format!("<!-- {name}:end -->");
    let text = fs::read_to_string(doc).unwrap_or_else(|_| "# Benchmarks\n".to_owned());
    let block = format!("{begin}\n{report}\n{end}");
    let updated = match (text.find(&begin), text.find(&end)) {
        (Some(at), Some(until)) if at < until => {
            format!("{}{block}{}", &text[..at], &text[until + end.len()..])
        }
        _ => format!("{}\n\n## {heading}\n\n{block}\n", text.trim_end()),
    };
    fs::write(doc, updated).map_err(|error| format!("cannot write {}: {error}", doc.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_appends_the_section_once_then_replaces_only_the_block() {
        let dir = tempfile::tempdir().unwrap();
        let doc = dir.path().join("BENCHMARKS.md");
        fs::write(
            &doc,
            "# Benchmarks\n\n<!-- edge:begin -->\nedge\n<!-- edge:end -->\n",
        )
        .unwrap();
        record_section(&doc, "reads", "Reads (issue 5)", "first").unwrap();
        let text = fs::read_to_string(&doc).unwrap();
        assert!(
            text.ends_with(
                "## Reads (issue 5)\n\n<!-- reads:begin -->\nfirst\n<!-- reads:end -->\n"
            )
        );
        fs::write(&doc, format!("{text}\nanalysis\n")).unwrap();
        record_section(&doc, "reads", "Reads (issue 5)", "second").unwrap();
        let text = fs::read_to_string(&doc).unwrap();
        assert_eq!(text.matches("## Reads (issue 5)").count(), 1);
        assert!(text.contains("<!-- reads:begin -->\nsecond\n<!-- reads:end -->\n\nanalysis\n"));
        assert!(text.contains("<!-- edge:begin -->\nedge\n<!-- edge:end -->"));
        assert!(!text.contains("first"));
    }
}
