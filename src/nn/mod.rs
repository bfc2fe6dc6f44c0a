//! Layers with explicit forward and backward passes, and the graph that runs them.

pub mod graph;
pub mod layers;

pub use graph::{BackwardPart, BackwardTime, Graph, Mode, Node, Op, StateMut, StateRef, StepTime, Trace, WidthSlot};
pub use layers::{BatchNorm, Conv2d, Linear, Param, ShortcutA};
