//! Example dynamic stage. PLACEHOLDER: being written.
