//! Settings named by a word (`--resize adm`, `--metrics fid,kid`): each such enum lists its values
//! once, with their names and one-line help ([`Choice::VALUES`]; `choice_enum!` declares an enum
//! and its list together), and parsing, printing and the command line's lists of possible values
//! all read that list. The command line wraps it once, generically, for every enum
//! (`src/cli/choice.rs`); it mirrors none of them.

/// An enum whose values have names.
pub trait Choice: Copy + PartialEq + Send + Sync + 'static {
    /// What a value is, in error messages (`resize`, `metric`).
    const WHAT: &'static str;

    /// Every value with its name and a one-line help, in the order help texts list them.
    const VALUES: &'static [(Self, &'static str, &'static str)];

    /// The value's name (`pytorch-fid`).
    fn choice_name(self) -> &'static str {
        Self::VALUES
            .iter()
            .find(|(v, ..)| *v == self)
            .map(|(_, name, _)| *name)
            .expect("every value of a Choice is listed in VALUES")
    }

    /// The value's one-line help.
    fn choice_help(self) -> &'static str {
        Self::VALUES
            .iter()
            .find(|(v, ..)| *v == self)
            .map(|(.., help)| *help)
            .expect("every value of a Choice is listed in VALUES")
    }

    /// The value named `name` (surrounding spaces ignored); else an error listing the names.
    fn from_choice_name(name: &str) -> Result<Self, String> {
        let wanted = name.trim();
        Self::VALUES
            .iter()
            .find(|(_, n, _)| *n == wanted)
            .map(|(v, ..)| *v)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::VALUES.iter().map(|(_, n, _)| *n).collect();
                format!("unknown {} `{name}`: use {}", Self::WHAT, or_list(&names))
            })
    }
}

/// `a`, `a or b`, `a, b or c`.
fn or_list(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

/// `FromStr` and `Display` of a [`Choice`] through its names, and serde through them (so a job
/// description stores `"pytorch-fid"`, as the command line spells it).
macro_rules! choice_str {
    ($($t:ty),* $(,)?) => {$(
        $crate::choice::serde_by_name!($t);

        impl std::str::FromStr for $t {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                <$t as $crate::choice::Choice>::from_choice_name(s)
            }
        }

        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str($crate::choice::Choice::choice_name(*self))
            }
        }
    )*};
}
pub(crate) use choice_str;

/// An enum declared with its [`Choice`] list: each value once, with its doc comment, its name and
/// its one-line help (in the order help texts list them). The enum (with the attributes given,
/// derives included), its `Choice`, `FromStr`, `Display` and serde come from the rows.
macro_rules! choice_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident: $what:literal {
            $( $(#[$vmeta:meta])* $variant:ident => ($value:literal, $help:literal), )*
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )*
        }

        impl $crate::choice::Choice for $name {
            const WHAT: &'static str = $what;
            const VALUES: &'static [(Self, &'static str, &'static str)] =
                &[$(($name::$variant, $value, $help)),*];
        }
        $crate::choice::choice_str!($name);
    };
}
pub(crate) use choice_enum;

/// Serde through a type's `Display` and `FromStr`.
macro_rules! serde_by_name {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let name = <String as serde::Deserialize>::deserialize(deserializer)?;
                name.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use serde_by_name;

#[cfg(test)]
mod tests {
    use super::*;

    choice_enum! {
        #[derive(Debug, Clone, Copy, PartialEq)]
        enum Colour: "colour" {
            Red => ("red", "Red"),
            Dark => ("dark-blue", "Blue"),
        }
    }

    #[test]
    fn names_parse_and_print() {
        for (value, name, _) in Colour::VALUES {
            assert_eq!(name.parse::<Colour>().unwrap(), *value);
            assert_eq!(value.to_string(), *name);
        }
        assert_eq!(Colour::Dark.choice_help(), "Blue");
        assert_eq!(
            "green".parse::<Colour>().unwrap_err(),
            "unknown colour `green`: use red or dark-blue"
        );
    }
}
