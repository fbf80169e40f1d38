//! Walking sorted lists of names together.
//!
//! Subscriptions, a snapshot's resources and its lists of changes are all
//! in name order. Taking the names of one list out of another is a gallop
//! through the second, not a lookup per name: one step per name when the
//! two lists go together (a full push names every resource), a bisection's
//! worth when the first list is one name of many (an everyday update).

use std::sync::Arc;

/// Advances `rest` past its leading elements for which `before` holds (they
/// are a prefix: `rest` is sorted), in steps that double and then by
/// bisection within the last step.
fn skip_before<T>(rest: &mut &[T], before: impl Fn(&T) -> bool) {
    // Nothing to skip, the usual case when the lists go together: one
    // comparison, of one name with itself, told by address.
    if rest.first().is_none_or(|first| !before(first)) {
        return;
    }
    let mut step = 1;
    while step < rest.len() && before(&rest[step]) {
        step *= 2;
    }
    let skipped = rest[..step.min(rest.len())].partition_point(&before);
    *rest = &rest[skipped..];
}

/// Takes from `rest` the element `is` picks, if `rest` has it, and passes
/// what comes before it (`before`): one step of walking two sorted lists.
pub fn take<'a, T>(rest: &mut &'a [T], before: impl Fn(&T) -> bool, is: impl Fn(&T) -> bool) -> Option<&'a T> {
    skip_before(rest, before);
    let (first, after) = rest.split_first().filter(|(first, _)| is(first))?;
    *rest = after;
    Some(first)
}

/// The elements of `rest` whose names (`name_of`) are in `names`, in
/// order; both lists sorted by name and without repeats.
pub fn named<'a, 'n, T>(mut rest: &'a [T], names: impl IntoIterator<Item = &'n Arc<str>>, name_of: impl Fn(&T) -> &Arc<str>) -> Vec<&'a T> {
    let names = names.into_iter();
    let mut found = Vec::with_capacity(names.size_hint().0.min(rest.len()));
    for name in names {
        found.extend(take(&mut rest, |item| before(name_of(item), name), |item| same(name_of(item), name)));
    }
    found
}

/// Two names are one: told by address where they are one allocation (a
/// subscription holds its snapshot's names, and a snapshot takes over the
/// names of the one before), by the strings otherwise.
pub fn same(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || **a == **b
}

fn before(a: &Arc<str>, b: &Arc<str>) -> bool {
    !Arc::ptr_eq(a, b) && **a < **b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(names: &[&str]) -> Vec<Arc<str>> {
        names.iter().map(|name| Arc::from(*name)).collect()
    }

    fn named_in<'a>(rest: &'a [Arc<str>], names: &[Arc<str>]) -> Vec<&'a str> {
        named(rest, names, |name| name).into_iter().map(|name| &**name).collect()
    }

    #[test]
    fn the_names_of_one_list_are_taken_from_another_in_order() {
        let rest = list(&["b", "d", "e", "g"]);
        assert_eq!(named_in(&rest, &list(&["a", "b", "c", "d", "f", "g", "h"])), ["b", "d", "g"]);
        assert_eq!(named_in(&rest, &rest), ["b", "d", "e", "g"], "the same allocations");
        assert_eq!(named_in(&rest, &list(&["b", "d", "e", "g"])), ["b", "d", "e", "g"], "equal strings");
        assert_eq!(named_in(&rest, &list(&["e"])), ["e"]);
        assert!(named_in(&rest, &list(&["a", "c", "f", "h"])).is_empty());
        assert!(named_in(&rest, &[]).is_empty() && named_in(&[], &list(&["a"])).is_empty());
        // The same as a lookup per name, on lists that interleave every way.
        let all: Vec<String> = (0..40).map(|i| format!("n{i:02}")).collect();
        for step in 1..6 {
            let mine: Vec<Arc<str>> = all.iter().step_by(step).map(|name| Arc::from(name.as_str())).collect();
            let theirs: Vec<Arc<str>> = all.iter().skip(1).step_by(7 - step).map(|name| Arc::from(name.as_str())).collect();
            let expected: Vec<&str> = theirs.iter().map(|name| &**name).filter(|name| mine.iter().any(|m| &**m == *name)).collect();
            assert_eq!(named_in(&mine, &theirs), expected, "every {step}th name against every {}th", 7 - step);
        }
        // One name of many (an everyday update), wherever it is.
        let many: Vec<Arc<str>> = all.iter().map(|name| Arc::from(name.as_str())).collect();
        for one in &all {
            assert_eq!(named_in(&many, &list(&[one])), [one.as_str()]);
        }
        assert!(named_in(&many, &list(&["n99", "o"])).is_empty());
    }

    #[test]
    fn taking_passes_what_is_before_and_keeps_what_is_not_taken() {
        let numbers = [1, 3, 5, 7];
        let mut rest = &numbers[..];
        assert_eq!(take(&mut rest, |n| *n < 3, |n| *n == 3), Some(&3));
        assert_eq!(rest, [5, 7]);
        assert_eq!(take(&mut rest, |n| *n < 6, |n| *n == 6), None, "6 is not there");
        assert_eq!(rest, [7], "what comes after is kept");
        assert_eq!(take(&mut rest, |n| *n < 9, |n| *n == 9), None);
        assert!(rest.is_empty());
    }

    #[test]
    fn skipping_stops_at_the_first_element_not_before() {
        let numbers: Vec<u32> = (0..100).collect();
        for at in [0, 1, 2, 3, 7, 8, 9, 63, 64, 65, 99, 100, 150] {
            let mut rest = &numbers[..];
            skip_before(&mut rest, |n| *n < at);
            assert_eq!(rest.first().copied(), (at < 100).then_some(at), "skipping what is before {at}");
        }
    }
}
