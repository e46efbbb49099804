//! Expanding the templates a request names into its prompt, at submit.

use std::collections::HashMap;

use kiln_shared::domain::template::{self, Resolved};
use kiln_shared::domain::{Job, Template, UserId, ValidationError};
use kiln_shared::ports::JobStore;

use crate::ApiError;

/// The template `name` as `user` sees it: their own, else a global one.
pub async fn find(
    store: &dyn JobStore,
    user: &UserId,
    name: &str,
) -> Result<Option<Template>, ApiError> {
    if !template::valid_name(name) {
        return Ok(None);
    }
    if let Some(t) = store.get_template(Some(user), name).await? {
        return Ok(Some(t));
    }
    Ok(store.get_template(None, name).await?)
}

/// Rewrites each job's prompt with the templates its `template`, `character` and `style` name
/// (see [`template::expand`]). An unknown `template` is a `400` naming `template` (prefixed by
/// `{list}[i].` for a batch); a `character` or `style` that names no template stays a label.
/// Each name is looked up once per call, however many jobs use it.
pub async fn expand_all(
    store: &dyn JobStore,
    user: &UserId,
    jobs: &mut [Job],
    list: Option<&str>,
) -> Result<(), ApiError> {
    let mut found: HashMap<String, Option<Template>> = HashMap::new();
    for (i, job) in jobs.iter_mut().enumerate() {
        let r = &job.request;
        if r.template.is_none() && r.character.is_none() && r.style.is_none() {
            continue;
        }
        for name in [&r.template, &r.character, &r.style].into_iter().flatten() {
            if !found.contains_key(name) {
                let t = find(store, user, name).await?;
                found.insert(name.clone(), t);
            }
        }
        let get = |n: &Option<String>| {
            n.as_ref()
                .and_then(|n| found.get(n))
                .and_then(Option::as_ref)
        };
        let name = |e: ValidationError| match list {
            Some(l) => ValidationError::new(format!("{l}[{i}].{}", e.field), e.message),
            None => e,
        };
        if let (Some(t), None) = (&r.template, get(&r.template)) {
            return Err(name(ValidationError::new(
                "template",
                format!("no template named {t:?}"),
            ))
            .into());
        }
        let resolved = Resolved {
            template: get(&r.template),
            character: get(&r.character),
            style: get(&r.style),
        };
        let prompt = template::expand(&r.prompt, resolved).map_err(name)?;
        job.request.prompt = prompt;
    }
    Ok(())
}
