//! `ecr-neural`: the MiniLM sentence encoder and the emotion tagger, in candle.
