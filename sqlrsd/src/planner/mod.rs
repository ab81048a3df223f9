//! Placeholder while this component is written.
