//! `ecr-data`: ReDial dialogues, the movie catalogue, the DBpedia KG, reviews
//! and emotion annotations, entity linking, and ECR's training instances.

pub mod annotations;
pub mod emotion_source;
pub mod error;
pub mod jsonl;
pub mod paths;

pub use annotations::{Annotation, load_annotations};
pub use emotion_source::{AnnotationSource, EmotionFile, EmotionSource, FirstOf, NoEmotions};
pub use error::DataError;
pub use paths::data_dir;
