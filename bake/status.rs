//! How things end, as enums: each serialises as the string the manifest and the journal have
//! always carried (so their JSON is unchanged), and prints the same way.

use serde::{Deserialize, Serialize};

macro_rules! statuses {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $s:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $s)] $v),*
        }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$v => $s),*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

statuses! {
    /// How a bake (or patch) ended, in its manifest.
    Status {
        /// Still running (a manifest is only printed once this is set).
        #[default]
        Running = "",
        Succeeded = "succeeded",
        /// An image with this fingerprint exists, distributed as configured: nothing launched.
        Reused = "reused",
        /// It exists; its copies, shares, deprecation or parameters were brought up to date.
        Redistributed = "redistributed",
        /// The image is ready but cleanup (or the roll) left resources, named in `leftovers`: exit 1.
        Leftovers = "leftovers",
        Failed = "failed",
        Interrupted = "interrupted",
    }
}

impl Status {
    /// Ends with exit 1 (or 130).
    pub fn is_failure(self) -> bool {
        matches!(self, Status::Failed | Status::Interrupted | Status::Leftovers)
    }
    /// An image of the role is ready to roll.
    pub fn has_image(self) -> bool {
        matches!(self, Status::Succeeded | Status::Reused | Status::Redistributed | Status::Leftovers)
    }
}

statuses! {
    /// How a roll ended, in its manifest.
    RollStatus {
        #[default]
        Running = "",
        Succeeded = "succeeded",
        /// Every group was on the image already.
        Unchanged = "unchanged",
        /// `--plan`: nothing changed.
        Planned = "planned",
        /// Every group rolled, but something bake made for the roll could not be removed: exit 1.
        Leftovers = "leftovers",
        Failed = "failed",
        Interrupted = "interrupted",
    }
}

statuses! {
    /// What happened to one group in a roll.
    GroupOutcome {
        #[default]
        Pending = "",
        Planned = "planned",
        Unchanged = "unchanged",
        NotStarted = "not-started",
        Rolled = "rolled",
        Failed = "failed",
        /// Another group failed (or Ctrl-C) while this one's refresh ran: it was cancelled.
        Cancelled = "cancelled",
        RolledBackByAws = "rolled-back-by-aws",
        RolledBack = "rolled-back",
        RollbackFailed = "rollback-failed",
    }
}

statuses! {
    /// How a bake ended, in its journal (what `bake cleanup` reads).
    Finish {
        #[default]
        Succeeded = "succeeded",
        Leftovers = "leftovers",
        /// Failed with `--on-error abort`: everything kept for debugging.
        FailedKept = "failed-kept",
        Failed = "failed",
        Interrupted = "interrupted",
        /// `bake cleanup` removed what a failed bake left.
        Cleaned = "cleaned",
    }
}

impl Finish {
    /// The bake made its image and published it (whatever cleanup left).
    pub fn succeeded(self) -> bool {
        matches!(self, Finish::Succeeded | Finish::Leftovers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_serialise_as_the_strings_manifests_always_carried() {
        assert_eq!(serde_json::to_string(&Status::Redistributed).unwrap(), "\"redistributed\"");
        assert_eq!(serde_json::to_string(&Status::Running).unwrap(), "\"\"");
        assert_eq!(serde_json::to_string(&GroupOutcome::RolledBackByAws).unwrap(), "\"rolled-back-by-aws\"");
        assert_eq!(serde_json::from_str::<Finish>("\"failed-kept\"").unwrap(), Finish::FailedKept);
        assert_eq!(RollStatus::Planned.to_string(), "planned");
    }
}
