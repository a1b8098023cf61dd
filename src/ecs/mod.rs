//! The ECS side of the host: the container agent's introspection API (`agent`), the ECS
//! API's description of this container instance (`api`) and which tasks are daemons
//! (`daemons`). Shared by capacity and the drain
//! ("which tasks run here, and which are work"; "what does ECS think is left here").

pub mod agent;
pub mod api;
pub mod daemons;
