//! The ECS side of the host: the container agent's introspection API (`agent`). Shared by
//! capacity and the drain ("which tasks run here, and which are work").

pub mod agent;
pub mod api;
