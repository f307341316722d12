//! The last step of every bake and patch: what the image holds (`crate::inventory`), read from the
//! builder in pages, checked against the size and sha256 the builder printed, kept with the
//! manifest (locally under the state folder's `inventory/`, and in the shared state when the
//! project has one), and tagged on the image by its digest (`bake:inventory`).

use std::time::Duration;

use crate::error::{Error, Result};
use crate::inventory::{self, Inventory};
use crate::manifest::InventoryRecord;
use crate::stages::context::{Baking, Builder};
use crate::stages::provision::run_command;

/// Lists the builder's packages, kernel and container images into `ctx.manifest.inventory`, and
/// stores the whole inventory.
pub async fn take(ctx: &mut Baking, builder: &Builder) -> Result<()> {
    let what = format!("the inventory of builder {} in {}", builder.instance, ctx.region);
    let failed = |o: &crate::stages::provision::Outcome| Error::StepFailed {
        step: "inventory".into(),
        instance: builder.instance.clone(),
        region: ctx.region.clone(),
        status: o.status.to_lowercase(),
        exit_code: o.code,
        stderr_tail: o.stderr.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().map(str::to_string).collect(),
    };
    let o = run_command(ctx, builder, "inventory", inventory::script(), Duration::from_secs(300)).await?;
    if o.status != "Success" {
        return Err(failed(&o));
    }
    let (size, sha, first) = inventory::first_page(&o.stdout).map_err(|e| Error::Other(format!("{what}: {e}")))?;
    let mut doc = first.into_bytes();
    while doc.len() < size {
        ctx.report.stage("inventory", &format!("reading the package list, {} of {size} bytes", doc.len()));
        let o = run_command(ctx, builder, "inventory page", inventory::page_script(doc.len()), Duration::from_secs(120)).await?;
        if o.status != "Success" {
            return Err(failed(&o));
        }
        if o.stdout.is_empty() {
            return Err(Error::Other(format!("{what}: the builder printed nothing from byte {} of {size}", doc.len())));
        }
        doc.extend_from_slice(o.stdout.as_bytes());
    }
    let got = crate::plan::sha256_hex(&doc);
    if doc.len() != size || got != sha {
        return Err(Error::Other(format!(
            "{what}: read {} bytes with sha256 {got}, but the builder wrote {size} bytes with sha256 {sha}; the output was cut or changed on the way",
            doc.len()
        )));
    }
    let text = String::from_utf8(doc).map_err(|_| Error::Other(format!("{what}: it is not UTF-8 text")))?;
    let inv = inventory::parse(&text).map_err(|e| Error::Other(format!("{what}: {e}")))?;
    // A patch that was to fix something (`bake patch --affected`) and did not: no image is made,
    // nothing is published or rolled.
    let still = crate::inventory::still_below(&inv, &ctx.opts.fixes);
    if !still.is_empty() {
        return Err(Error::Other(format!(
            "patched, but builder {} still holds {}: the package repositories have no fix yet; no image was made, nothing published or rolled",
            builder.instance,
            still.join(", ")
        )));
    }
    let digest = inv.sha256();
    let stored = store(ctx, &inv, &digest).await?;
    ctx.report.info(&format!("inventory: {} packages, kernel {}, {} container images (sha256 {digest})", inv.packages.len(), inv.kernel, inv.containers.len()));
    ctx.manifest.inventory = Some(InventoryRecord { sha256: digest, kernel: inv.kernel, packages: inv.packages.len(), containers: inv.containers, stored });
    Ok(())
}

/// Where an inventory is kept on this machine.
pub fn local_path(root: &std::path::Path, digest: &str) -> std::path::PathBuf {
    crate::journal::state_dir(root).join("inventory").join(format!("{digest}.json"))
}

/// The key of an inventory in the shared state.
pub fn remote_key(digest: &str) -> String {
    format!("inventory/{digest}.json")
}

async fn store(ctx: &Baking, inv: &Inventory, digest: &str) -> Result<Vec<String>> {
    let body = serde_json::to_vec_pretty(inv).map_err(|e| Error::Other(format!("cannot encode the inventory: {e}")))?;
    let path = local_path(&ctx.root, digest);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::local("cannot create the inventory folder", dir, e))?;
    }
    std::fs::write(&path, &body).map_err(|e| Error::local("cannot write the inventory", &path, e))?;
    let mut stored = vec![path.display().to_string()];
    if let Some(r) = crate::remote::get() {
        // Named by its digest: the same inventory is the same object, written once.
        r.create(&remote_key(digest), body).await?;
        stored.push(r.url(&remote_key(digest)));
    }
    Ok(stored)
}

/// Reads the inventory `digest` names: this machine's copy, else the shared state's. None when
/// neither has it. A digest that is not a sha256 (a forged or broken `bake:inventory` tag) and a
/// copy that does not hash to its digest (changed since bake wrote it) are errors, never read as
/// something else: the caller says the image could not be audited.
pub async fn load(root: &std::path::Path, digest: &str) -> Result<Option<Inventory>> {
    if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
        return Err(Error::Other(format!("its {} tag `{}` is not a sha256", crate::tags::INVENTORY, crate::error::one_line(digest))));
    }
    let read = |bytes: &[u8], from: &str| -> Result<Inventory> {
        let inv: Inventory = serde_json::from_slice(bytes).map_err(|e| Error::Other(format!("its inventory {from} cannot be read: {e}")))?;
        if inv.sha256() != digest {
            return Err(Error::Other(format!("its inventory {from} does not match its digest: it was changed after bake wrote it")));
        }
        Ok(inv)
    };
    let path = local_path(root, digest);
    let local = std::fs::read(&path).ok().map(|bytes| read(&bytes, &path.display().to_string()));
    if let Some(Ok(inv)) = local {
        return Ok(Some(inv));
    }
    if let Some(r) = crate::remote::get() {
        if let Some((bytes, _)) = r.read(&remote_key(digest)).await? {
            return read(&bytes, &r.url(&remote_key(digest))).map(Some);
        }
    }
    match local {
        Some(Err(e)) => Err(e),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_digest_that_is_not_a_sha256_is_never_read_as_a_path() {
        let dir = std::env::temp_dir();
        for forged in ["../../../etc/passwd", "", "AB", &"A".repeat(64), &format!("{}/", "a".repeat(63))] {
            let e = super::load(&dir, forged).await.unwrap_err().to_string();
            assert!(e.contains("is not a sha256"), "{forged:?}: {e}");
        }
        assert!(super::load(&dir, &"0".repeat(64)).await.unwrap().is_none());
    }
}
