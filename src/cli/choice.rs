//! The one bridge from the library's named settings ([`Choice`]) to clap: a value parser that
//! lists a choice's values (with their help) and parses through them, for every such enum.

use std::ffi::OsStr;
use std::marker::PhantomData;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use llamagen_eval::choice::Choice;

/// Parses a flag's value into `T` by its [`Choice`] names; `--help` lists them with their help,
/// and an unknown value is clap's usual "invalid value ... [possible values: ...]" error.
#[derive(Debug)]
pub struct ChoiceParser<T>(PhantomData<fn() -> T>);

impl<T> Clone for ChoiceParser<T> {
    fn clone(&self) -> Self {
        ChoiceParser(PhantomData)
    }
}

/// The value parser of `T`: `#[arg(long, value_parser = choice::<Resize>())]`.
pub fn choice<T: Choice>() -> ChoiceParser<T> {
    ChoiceParser(PhantomData)
}

fn possible<T: Choice>() -> impl Iterator<Item = PossibleValue> {
    T::VALUES
        .iter()
        .map(|(_, name, help)| PossibleValue::new(*name).help(*help))
}

impl<T: Choice> TypedValueParser for ChoiceParser<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let name = PossibleValuesParser::new(possible::<T>()).parse_ref(cmd, arg, value)?;
        T::from_choice_name(&name)
            .map_err(|e| clap::Error::raw(clap::error::ErrorKind::InvalidValue, e))
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(possible::<T>()))
    }
}
