//! `ecr-data`: ReDial dialogues, the movie catalogue, the DBpedia KG, reviews
//! and emotion annotations, entity linking, and ECR's training instances.
