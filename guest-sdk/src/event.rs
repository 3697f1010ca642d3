//! What a handler hands to one flow execution.

use serde::de::DeserializeOwned;

use crate::bindings::wsflow::flow::types;
use crate::connection::Message;
use crate::param::{FromParam, ParamValue};
use crate::{Error, Result};

pub use types::Mode;

/// The message that started a data-mode execution.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// Connection mode: no message started the execution.
    None,
    /// A text message (`format = "string"`).
    Text(String),
    /// A JSON text message (`format = "json"`), parsed and validated by the
    /// host before the flow runs.
    Json(String),
    /// A binary message.
    Binary(Vec<u8>),
}

/// One execution's event: its content, the request's parameters and the
/// handler's mapped inputs.
#[derive(Debug)]
pub struct Event {
    mode: Mode,
    content: Content,
    path_params: Vec<types::Param>,
    query_params: Vec<types::Param>,
    headers: Vec<types::Param>,
    inputs: Vec<types::Input>,
}

impl Event {
    pub(crate) fn from_raw(raw: types::Event) -> Self {
        let content = match raw.content {
            types::Content::None => Content::None,
            types::Content::Text(text) => Content::Text(text),
            types::Content::Json(text) => Content::Json(text),
            types::Content::Binary(bytes) => Content::Binary(bytes),
        };
        Self {
            mode: raw.mode,
            content,
            path_params: raw.path_params,
            query_params: raw.query_params,
            headers: raw.headers,
            inputs: raw.inputs,
        }
    }

    /// Whether this execution serves one message or a whole connection.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The message content.
    pub fn content(&self) -> &Content {
        &self.content
    }

    /// The content as a WebSocket message again (JSON content as text),
    /// or `None` in connection mode.
    pub fn message(&self) -> Option<Message> {
        match &self.content {
            Content::None => None,
            Content::Text(text) | Content::Json(text) => Some(Message::Text(text.clone())),
            Content::Binary(bytes) => Some(Message::Binary(bytes.clone())),
        }
    }

    /// The content's text (string or JSON format), if it was a text message.
    pub fn text(&self) -> Option<&str> {
        match &self.content {
            Content::Text(text) | Content::Json(text) => Some(text),
            _ => None,
        }
    }

    /// The content's bytes, if it was a binary message.
    pub fn binary(&self) -> Option<&[u8]> {
        match &self.content {
            Content::Binary(bytes) => Some(bytes),
            _ => None,
        }
    }

    /// Deserialize text content as JSON into `T`.
    ///
    /// ```no_run
    /// # fn f(event: wsflow_sdk::Event) -> wsflow_sdk::Result {
    /// #[derive(serde::Deserialize)]
    /// struct Chat { text: String }
    /// let chat: Chat = event.json()?;
    /// # Ok(()) }
    /// ```
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        let text = self
            .text()
            .ok_or_else(|| Error::msg("the event has no text content to parse as JSON"))?;
        Ok(serde_json::from_str(text)?)
    }

    /// A path parameter converted to `T`, e.g. `event.path_param::<String>("room")`.
    pub fn path_param<T: FromParam>(&self, name: &str) -> Result<T> {
        lookup(&self.path_params, "path parameter", name)
    }

    /// A query parameter converted to `T`. Use `Option<T>` for one that may
    /// be absent and `Vec<T>` for a repeating one.
    pub fn query_param<T: FromParam>(&self, name: &str) -> Result<T> {
        lookup(&self.query_params, "query parameter", name)
    }

    /// A request header converted to `T`. Names match case-insensitively.
    pub fn header<T: FromParam>(&self, name: &str) -> Result<T> {
        lookup(&self.headers, "header", &name.to_ascii_lowercase())
    }

    /// A mapped flow input (`[handlers.inputs]` in the manifest),
    /// deserialized from its JSON value.
    pub fn input<T: DeserializeOwned>(&self, name: &str) -> Result<T> {
        let input = self
            .inputs
            .iter()
            .find(|input| input.name == name)
            .ok_or_else(|| Error::msg(format!("no flow input named `{name}`")))?;
        serde_json::from_str(&input.json)
            .map_err(|error| Error::msg(format!("flow input `{name}`: {error}")))
    }

    /// All mapped flow inputs, as `(name, JSON text)`.
    pub fn inputs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.inputs
            .iter()
            .map(|i| (i.name.as_str(), i.json.as_str()))
    }

    /// All path parameters.
    pub fn path_params(&self) -> impl Iterator<Item = (&str, &ParamValue)> {
        self.path_params.iter().map(|p| (p.name.as_str(), &p.value))
    }

    /// All query parameters.
    pub fn query_params(&self) -> impl Iterator<Item = (&str, &ParamValue)> {
        self.query_params
            .iter()
            .map(|p| (p.name.as_str(), &p.value))
    }

    /// All headers (lower-case names).
    pub fn headers(&self) -> impl Iterator<Item = (&str, &ParamValue)> {
        self.headers.iter().map(|p| (p.name.as_str(), &p.value))
    }
}

pub(crate) fn lookup<T: FromParam>(params: &[types::Param], kind: &str, name: &str) -> Result<T> {
    let value = params.iter().find(|p| p.name == name).map(|p| &p.value);
    T::from_param(value).map_err(|problem| Error::msg(format!("{kind} `{name}`: {problem}")))
}
