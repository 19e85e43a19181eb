//! Ecosystem file parser and validator (placeholder while the parser is written).
