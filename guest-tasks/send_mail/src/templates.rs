//! The built-in mail templates and their rendering.
//!
//! A template is a subject and a body in which `{{name}}` stands for `vars.name`:
//! a string as it is, a number or a boolean as JSON writes it. A placeholder whose
//! variable is missing (or `null`) is an error naming it; variables no placeholder
//! uses are ignored. `{{` not followed by a name and `}}` is plain text.

use taskhost_guest::{Map, Value};

/// A built-in mail.
#[derive(Debug)]
pub struct Template {
    /// The name that `template` selects it by.
    pub name: &'static str,
    /// The subject, unless the input gives one.
    pub subject: &'static str,
    /// The body.
    pub body: &'static str,
}

/// Every template, by name.
const TEMPLATES: &[Template] = &[
    Template {
        name: "welcome",
        subject: "Welcome, {{name}}!",
        body: "Hello {{name}},\n\n\
               Welcome aboard: your account is ready.\n\n\
               -- The taskhost team\n",
    },
    Template {
        name: "reset",
        subject: "Your password reset code",
        body: "Hello {{name}},\n\n\
               Someone, probably you, asked to reset your password.\n\
               Your code is {{code}}. It works for 30 minutes.\n\n\
               If it was not you, ignore this mail: nothing changes.\n\n\
               -- The taskhost team\n",
    },
    Template {
        name: "notice",
        subject: "{{title}}",
        body: "Hello {{name}},\n\n\
               {{text}}\n\n\
               -- The taskhost team\n",
    },
];

/// The template called `name`, or an error that lists them all.
pub fn find(name: &str) -> Result<&'static Template, String> {
    TEMPLATES
        .iter()
        .find(|template| template.name == name)
        .ok_or_else(|| format!("no template {name:?}: use one of {}", names()))
}

/// The templates' names, for messages: "`welcome`, `reset`, `notice`".
pub fn names() -> String {
    TEMPLATES
        .iter()
        .map(|template| format!("`{}`", template.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `text` with each `{{name}}` replaced by `vars.name`; `what` names the text in an
/// error ("template `reset`", "the subject").
pub fn render(text: &str, vars: &Map<String, Value>, what: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        let (before, from_open) = rest.split_at(open);
        out.push_str(before);
        let after_open = &from_open[2..];
        let placeholder = after_open
            .find("}}")
            .map(|close| (after_open[..close].trim(), close))
            .filter(|(name, _)| is_name(name));
        match placeholder {
            Some((name, close)) => {
                out.push_str(&value_of(vars, name, what)?);
                rest = &after_open[close + 2..];
            }
            None => {
                out.push_str("{{");
                rest = after_open;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// A variable name: letters, digits and `_`.
fn is_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The text that `{{name}}` becomes.
fn value_of(vars: &Map<String, Value>, name: &str, what: &str) -> Result<String, String> {
    match vars.get(name) {
        Some(Value::String(text)) => Ok(text.clone()),
        Some(value @ (Value::Number(_) | Value::Bool(_))) => Ok(value.to_string()),
        None | Some(Value::Null) => Err(format!(
            "{what} needs `{name}` in `vars`, as \"vars\": {{\"{name}\": \"...\"}}"
        )),
        Some(other) => Err(format!(
            "`vars.{name}` must be a string or a number, got {other}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use taskhost_guest::json;

    use super::*;

    fn vars(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(vars) => vars,
            _ => unreachable!("test vars are objects"),
        }
    }

    #[test]
    fn placeholders_take_the_vars() {
        let vars = vars(json!({"a": "x", "b": 2, "c": true, "unused": "u"}));
        assert_eq!(
            render("{{a}}-{{ b }}-{{c}}", &vars, "t"),
            Ok("x-2-true".to_owned())
        );
        assert_eq!(
            render("{{ {{a}} }} {{", &vars, "t"),
            Ok("{{ x }} {{".to_owned())
        );
    }

    #[test]
    fn a_missing_var_is_named() {
        let vars = vars(json!({"a": null, "list": [1]}));
        let error = render("{{a}}", &vars, "template `reset`").unwrap_err();
        assert!(error.contains("template `reset` needs `a`"), "{error}");
        assert!(
            render("{{b}}", &vars, "the subject")
                .unwrap_err()
                .starts_with("the subject")
        );
        assert!(
            render("{{list}}", &vars, "t")
                .unwrap_err()
                .contains("`vars.list`")
        );
    }

    #[test]
    fn every_template_is_found_by_name() {
        for template in TEMPLATES {
            assert_eq!(
                find(template.name).map(|found| found.name),
                Ok(template.name)
            );
        }
        assert!(
            find("nope")
                .unwrap_err()
                .contains("`welcome`, `reset`, `notice`")
        );
    }
}
