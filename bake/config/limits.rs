//! Every AWS limit and naming rule bake relies on, in one place, each with where AWS documents it.
//! Validation checks configuration against them before any call, so a bake never fails late on
//! something it could have refused up front.

/// Regions the AWS SDK's partitions know (aws, aws-cn, aws-us-gov, aws-eusc, the ISO partitions):
/// the `regions` of the partition table the SDK resolves endpoints with (aws-sdk-ec2 1.274's
/// `endpoint_lib.rs`, from the SDK's partitions.json). A new region needs a new bake release.
pub const REGIONS: &[&str] = &[
    "af-south-1",
    "ap-east-1",
    "ap-east-2",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ap-south-1",
    "ap-south-2",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-southeast-3",
    "ap-southeast-4",
    "ap-southeast-5",
    "ap-southeast-6",
    "ap-southeast-7",
    "ca-central-1",
    "ca-west-1",
    "cn-north-1",
    "cn-northwest-1",
    "eu-central-1",
    "eu-central-2",
    "eu-isoe-west-1",
    "eu-north-1",
    "eu-south-1",
    "eu-south-2",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "eusc-de-east-1",
    "il-central-1",
    "me-central-1",
    "me-south-1",
    "mx-central-1",
    "sa-east-1",
    "us-east-1",
    "us-east-2",
    "us-gov-east-1",
    "us-gov-west-1",
    "us-iso-east-1",
    "us-iso-west-1",
    "us-isob-east-1",
    "us-isob-west-1",
    "us-isof-east-1",
    "us-isof-south-1",
    "us-west-1",
    "us-west-2",
];

pub fn known_region(r: &str) -> bool {
    REGIONS.contains(&r)
}

/// The partition a region is in (the SDK's partitions.json, by region name).
pub fn partition(r: &str) -> &'static str {
    match r {
        _ if r.starts_with("cn-") => "aws-cn",
        _ if r.starts_with("us-gov-") => "aws-us-gov",
        _ if r.starts_with("us-isob-") => "aws-iso-b",
        _ if r.starts_with("us-isof-") => "aws-iso-f",
        _ if r.starts_with("us-iso-") => "aws-iso",
        _ if r.starts_with("eu-isoe-") => "aws-iso-e",
        _ if r.starts_with("eusc-") => "aws-eusc",
        _ => "aws",
    }
}

/// What is wrong with `r` as a region bake works in, if anything: a region of the `aws`
/// partition (bake's policies, managed policy ARNs and copies are written for that partition).
pub fn region_problem(r: &str) -> Option<String> {
    if !known_region(r) {
        return Some(format!("`{}` is not a region AWS has (e.g. us-east-1, eu-west-1; the SDK's partitions list them)", r.escape_default()));
    }
    match partition(r) {
        "aws" => None,
        p => Some(format!("`{r}` is in the {p} partition; bake works in the aws partition only (its policies and ARNs are written for it)")),
    }
}

/// AMI names: 3–128 characters of letters, digits, `( ) [ ] space . / - ' @ _`.
/// EC2 API reference, CreateImage, `Name`.
pub const AMI_NAME: std::ops::RangeInclusive<usize> = 3..=128;
pub const AMI_NAME_CHARS: &[u8] = b"()[] ./-'@_";

pub fn valid_ami_name(s: &str) -> bool {
    AMI_NAME.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || AMI_NAME_CHARS.contains(&b))
}

/// AMI descriptions: up to 255 characters. EC2 API reference, CreateImage, `Description`.
pub const AMI_DESCRIPTION: usize = 255;

/// Tags: at most 50 per resource, keys 1–128 characters, values up to 256, no `aws:` prefix.
/// "Tag your Amazon EC2 resources", Tag restrictions. bake adds its own tags to what the role
/// sets, so a role may set at most [`ROLE_TAGS`].
pub const TAG_KEY: usize = 128;
pub const TAG_VALUE: usize = 256;
pub const ROLE_TAGS: usize = 40;

/// What is wrong with a tag (or a tag filter) `key` = `value`, if anything. Keys and values
/// count characters, not bytes; white space at either end and control characters (a newline) are
/// refused as typos bake cannot tell from the intended tag.
pub fn tag_problem(key: &str, value: &str) -> Option<String> {
    let (k, v) = (key.chars().count(), value.chars().count());
    if k == 0 || k > TAG_KEY {
        return Some(format!("a tag key is 1-{TAG_KEY} characters; this one has {k}"));
    }
    if v > TAG_VALUE {
        return Some(format!("a tag value is at most {TAG_VALUE} characters; this one has {v}"));
    }
    if key.to_ascii_lowercase().starts_with("aws:") {
        return Some("tag keys starting with aws: are AWS's".into());
    }
    for (what, s) in [("key", key), ("value", value)] {
        if s.trim() != s {
            return Some(format!("the tag {what} `{}` has white space at an end", s.escape_default()));
        }
        if let Some(c) = s.chars().find(|c| c.is_control()) {
            return Some(format!("the tag {what} `{}` holds the control character `{}`", s.escape_default(), c.escape_default()));
        }
    }
    None
}

/// What is wrong with `name` as the SSM parameter a source image is read from, if anything: a
/// parameter name (public `/aws/service/...` ones included) or its ARN, exactly one parameter.
pub fn source_parameter_problem(name: &str) -> Option<String> {
    let path = if let Some(rest) = name.strip_prefix("arn:") {
        let parts: Vec<&str> = rest.splitn(5, ':').collect();
        let ok = parts.len() == 5
            && parts[0].starts_with("aws")
            && parts[1] == "ssm"
            && known_region(parts[2])
            && (parts[3].is_empty() || (parts[3].len() == 12 && parts[3].bytes().all(|b| b.is_ascii_digit())));
        match parts.get(4).and_then(|p| p.strip_prefix("parameter")) {
            Some(p) if ok && p.starts_with('/') => p,
            _ => return Some("is not an SSM parameter ARN (arn:aws:ssm:REGION:ACCOUNT:parameter/NAME)".into()),
        }
    } else {
        name
    };
    if !path.starts_with('/') {
        return Some("is not a parameter name (it starts with /)".into());
    }
    if let Some(c) = path.chars().find(|c| !(c.is_ascii_alphanumeric() || "_.-/".contains(*c))) {
        return Some(format!("holds `{}`; parameter names hold only letters, digits, _ . - and / (one parameter, no wildcard)", c.escape_default()));
    }
    if path.contains("//") || path.ends_with('/') {
        return Some("has an empty level".into());
    }
    if path.len() > 2048 {
        return Some("is longer than the 2048 characters AWS allows a parameter's name or ARN".into());
    }
    None
}

/// SSM parameter names: letters, digits, `_ . -` and `/` between levels, no space, at most 15
/// levels, not starting with `aws` or `ssm` (any case, with or without a leading slash), and at
/// most 1011 characters counting the whole ARN (SSM API reference, PutParameter, `Name`, and
/// "Creating Systems Manager parameters"): with the longest region name bake knows (14) that
/// leaves 1011 − len("arn:aws-us-gov:ssm:") − 14 − len(":123456789012:parameter") = 955.
pub const PARAMETER_NAME: usize = 955;
pub const PARAMETER_LEVELS: usize = 15;

/// What is wrong with `name` as an SSM parameter name bake may write, if anything.
pub fn parameter_name_problem(name: &str) -> Option<String> {
    let lower = name.trim_start_matches('/').to_ascii_lowercase();
    if !name.starts_with('/') {
        return Some("starts with / (a parameter hierarchy)".into());
    }
    if name.len() > PARAMETER_NAME {
        return Some(format!("is {} characters; AWS allows {PARAMETER_NAME} here (1011 with the parameter's ARN)", name.len()));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || "_.-/".contains(*c))) {
        return Some(format!("holds `{}`; parameter names hold only letters, digits, _ . - and /", c.escape_default()));
    }
    if name.contains("//") || name.ends_with('/') {
        return Some("has an empty level".into());
    }
    if lower.starts_with("aws") || lower.starts_with("ssm") {
        return Some("starts with aws or ssm, which AWS reserves".into());
    }
    let levels = name.split('/').filter(|s| !s.is_empty()).count();
    if levels > PARAMETER_LEVELS {
        return Some(format!("has {levels} levels; AWS allows {PARAMETER_LEVELS}"));
    }
    None
}

/// SSM Run Command's `executionTimeout` of AWS-RunShellScript: 1 second to 48 hours.
/// "AWS-RunShellScript" document parameters; SSM user guide, "Understanding command timeouts".
pub const STEP_TIMEOUT_MAX: u64 = 172_800;

/// A command's document with its parameters: "The content of the document must not exceed
/// 64KB. This quota also includes the content specified for input parameters at runtime"
/// (SSM API reference, CreateDocument, Content), read as 64,000 bytes. AWS-RunShellScript's own
/// content is about 1.3 KB; bake keeps a step's parameters, JSON-encoded as SendCommand sends
/// them, within [`SEND_COMMAND_PARAMETERS`] and sends a larger script in parts.
pub const SEND_COMMAND_DOCUMENT: usize = 64_000;
pub const SEND_COMMAND_PARAMETERS: usize = 56_000;

/// Values in the filters of one EC2 Describe call: AWS answers `FilterLimitExceeded` ("The
/// maximum number of filter values specified on a single call is 200"), undocumented in the API
/// reference but seen by every tool that describes big fleets by id (gossm #31, convox #2205).
/// The watchers and the roll's census ask for at most this many ids a call.
pub const EC2_FILTER_VALUES: usize = 200;

/// Describe calls a second per service and region that `BAKE_DESCRIBE_RATE` may ask for: at
/// least one every two seconds (slower, no wait could end in time), at most EC2's refill rate
/// for non-mutating calls (EC2 API reference, "Request throttling for the Amazon EC2 API": a
/// bucket of 100, refilled at 20 a second).
pub const DESCRIBE_RATE: std::ops::RangeInclusive<f64> = 0.5..=20.0;

/// Parameter Store's default throughput: 40 GetParameter calls a second (AWS General Reference,
/// "AWS Systems Manager endpoints and quotas", "Max throughput (transactions per second)").
/// Systems Manager's budget stays within it.
pub const SSM_READS: f64 = 40.0;

/// Values of DescribeInstanceInformation's `InstanceIds` filter: 1 to 100 (SSM API reference,
/// InstanceInformationStringFilter, `Values`).
pub const SSM_INSTANCE_ID_FILTER_VALUES: usize = 100;

/// How long bake may be told to wait for anything (an instance, an image, a refresh, a bake
/// time): AWS sets no limit; bake refuses more than a week, which is a typo, not a plan.
pub const WAIT_MAX: u64 = 7 * 86_400;

/// Deprecation at most 10 years ahead. EC2 API reference, EnableImageDeprecation, `DeprecateAt`.
pub const DEPRECATE_DAYS_MAX: u32 = 3_650;

/// `image.retire_after`: how long `bake prune` leaves an image disabled before deregistering it.
/// bake's own choice (DisableImage has no limit): a week by default, long enough to notice and
/// `bake prune --restore`, and past the 24 hours deregistration protection holds after it is
/// lifted (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ami-deregistration-protection.html);
/// at most the 10 years a deprecation date may reach.
pub const RETIRE_AFTER_DEFAULT: u64 = 7 * 86_400;
pub const RETIRE_AFTER_MAX: u64 = 3_650 * 86_400;
/// Deregistration protection's cooldown: "enforces deregistration protection for 24 hours after it is disabled".
pub const PROTECTION_COOLDOWN: u64 = 24 * 3_600;

/// Instance refresh preferences. Auto Scaling API reference, RefreshPreferences:
/// MinHealthyPercentage 0–100, MaxHealthyPercentage 100–200 and at most 100 above the minimum,
/// CheckpointPercentages rising, 1–100 (a refresh stops at the last one: bake requires 100),
/// CheckpointDelay 0–172800 seconds and only with checkpoints.
pub const CHECKPOINT_DELAY_MAX: u64 = 172_800;
/// RefreshPreferences BakeTime: 0–172800 seconds (Auto Scaling API reference).
pub const BAKE_TIME_MAX: u64 = 172_800;

/// CloudWatch alarm names: 1–255 characters (CloudWatch API reference, PutMetricAlarm); an
/// instance refresh's AlarmSpecification names at most 10 (Auto Scaling API reference,
/// AlarmSpecification); DescribeAlarms takes at most 100 names a call.
pub const ALARM_NAME: std::ops::RangeInclusive<usize> = 1..=255;
pub const REFRESH_ALARMS: usize = 10;
pub const DESCRIBE_ALARMS_NAMES: usize = 100;

/// An Elastic Load Balancing target group's ARN:
/// `arn:<partition>:elasticloadbalancing:<region>:<account>:targetgroup/<name>/<16 hex>`; names are
/// 1–32 letters, digits and hyphens, not starting or ending with a hyphen (ELBv2 API reference,
/// CreateTargetGroup). Its region is where bake watches it.
pub fn target_group_arn_problem(arn: &str) -> Option<String> {
    let bad = || Some(format!("`{}` is not a target group ARN (arn:aws:elasticloadbalancing:REGION:ACCOUNT:targetgroup/NAME/ID)", arn.escape_default()));
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [arn_, part, service, region, account, resource] = parts.as_slice() else { return bad() };
    if *arn_ != "arn" || !part.starts_with("aws") || *service != "elasticloadbalancing" || account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return bad();
    }
    if !known_region(region) || partition(region) != *part {
        return Some(format!("`{arn}` names region `{region}`, which partition {part} does not have"));
    }
    if let Some(why) = region_problem(region) {
        return Some(format!("`{arn}`: {why}"));
    }
    let r: Vec<&str> = resource.split('/').collect();
    let [kind, name, id] = r.as_slice() else { return bad() };
    let name_ok =
        (1..=32).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') && !name.starts_with('-') && !name.ends_with('-');
    if *kind != "targetgroup" || !name_ok || id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return bad();
    }
    None
}

/// bake watches at most this many target groups (one DescribeTargetHealth each a second during
/// the canaries' bake time; alarms are capped at 10 by AWS, target groups by bake alike).
pub const TARGET_GROUPS: usize = 10;

/// bake rolls at most this many other accounts in one roll (its own cap: each account's role is
/// assumed, and its groups discovered, in every region the roll covers).
pub const ROLL_ACCOUNTS: usize = 20;

/// The account of a target group ARN [`target_group_arn_problem`] accepted.
pub fn target_group_account(arn: &str) -> &str {
    arn.split(':').nth(4).unwrap_or_default()
}

/// An AWS account id: 12 digits.
pub fn is_account_id(a: &str) -> bool {
    a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit())
}

/// `arn:aws:iam::<account>:role/<path/><name>` of `account`: role names are 1–64 of letters,
/// digits and `+=,.@_-`; a path is `/`-delimited, up to 512 characters, of printable ASCII
/// (IAM API reference, CreateRole). Only the aws partition: bake's other checks are for it.
pub fn role_arn_problem(arn: &str, account: &str) -> Option<String> {
    let bad = || Some(format!("`{}` is not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)", arn.escape_default()));
    let Some(rest) = arn.strip_prefix("arn:aws:iam::") else { return bad() };
    let Some((acct, resource)) = rest.split_once(':') else { return bad() };
    let Some(path_name) = resource.strip_prefix("role/") else { return bad() };
    let (path, name) = path_name.rsplit_once('/').unwrap_or(("", path_name));
    let name_ok = (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b));
    let path_ok = path.len() < 512 && path.bytes().all(|b| (0x21..=0x7e).contains(&b)) && !path.contains("//");
    if !is_account_id(acct) || !name_ok || !path_ok {
        return bad();
    }
    if acct != account {
        return Some(format!("`{arn}` is a role of account {acct}, not of {account}"));
    }
    None
}

/// sts:AssumeRole's ExternalId: 2–1224 characters of letters, digits and `+=,.@:/-` and `_`
/// (STS API reference, AssumeRole).
pub fn external_id_problem(id: &str) -> Option<String> {
    if (2..=1224).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"+=,.@:/-_".contains(&b)) {
        None
    } else {
        Some(format!("`{}` is not an external id (2-1224 of letters, digits and + = , . @ : / - _)", id.chars().take(80).collect::<String>().escape_default()))
    }
}

/// The region of a target group ARN [`target_group_arn_problem`] accepted.
pub fn target_group_region(arn: &str) -> &str {
    arn.split(':').nth(3).unwrap_or_default()
}

/// Auto Scaling group names: 1–255 characters. Auto Scaling API reference, CreateAutoScalingGroup.
pub const GROUP_NAME: std::ops::RangeInclusive<usize> = 1..=255;

/// Instance types are `family.size` (`t3.small`, `c7gn.16xlarge`, `u-6tb1.metal`).
/// "Amazon EC2 instance types", naming conventions.
pub fn valid_instance_type(s: &str) -> bool {
    let Some((family, size)) = s.split_once('.') else { return false };
    !family.is_empty()
        && !size.is_empty()
        && family.as_bytes()[0].is_ascii_lowercase()
        && family.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && size.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// A KMS key as EC2 takes it: a key id (a UUID, or `mrk-` and 32 hex digits), `alias/NAME`, or
/// the ARN of either. KMS API reference, "Key identifiers (KeyId)".
pub fn valid_kms_key(s: &str) -> bool {
    let uuid = |k: &str| {
        let parts: Vec<&str> = k.split('-').collect();
        parts.len() == 5 && [8, 4, 4, 4, 12].iter().zip(&parts).all(|(n, p)| p.len() == *n && p.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    let mrk = |k: &str| k.strip_prefix("mrk-").map(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit())).unwrap_or(false);
    let alias = |a: &str| {
        a.strip_prefix("alias/")
            .map(|n| (1..=250).contains(&n.len()) && !n.starts_with("aws/") && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_-".contains(&b)))
            .unwrap_or(false)
    };
    if let Some(rest) = s.strip_prefix("arn:") {
        let parts: Vec<&str> = rest.splitn(5, ':').collect();
        return parts.len() == 5
            && parts[1] == "kms"
            && known_region(parts[2])
            && parts[3].len() == 12
            && parts[3].bytes().all(|b| b.is_ascii_digit())
            && (parts[4].strip_prefix("key/").map(|k| uuid(k) || mrk(k)).unwrap_or(false) || alias(parts[4]));
    }
    uuid(s) || mrk(s) || alias(s)
}

/// SNS topic ARNs: `arn:PARTITION:sns:REGION:ACCOUNT:NAME`, the name 1–256 of letters, digits,
/// `-` and `_` (`.fifo` at the end for FIFO topics). SNS API reference, CreateTopic, `Name`.
pub fn valid_sns_topic_arn(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 || parts[0] != "arn" || !parts[1].starts_with("aws") || parts[2] != "sns" {
        return false;
    }
    let name = parts[5].strip_suffix(".fifo").unwrap_or(parts[5]);
    known_region(parts[3])
        && parts[4].len() == 12
        && parts[4].bytes().all(|b| b.is_ascii_digit())
        && (1..=256).contains(&parts[5].len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !name.is_empty()
}

/// What is wrong with a webhook URL, if anything: https with a host, or http to this machine
/// (for a local relay or a test).
pub fn webhook_problem(url: &str) -> Option<String> {
    let Some((scheme, rest)) = url.split_once("://") else { return Some(format!("`{url}` is not an http(s) URL")) };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit_once('@').map(|(_, h)| h).unwrap_or(host);
    let name =
        if host.starts_with('[') { host.split(']').next().map(|h| h.trim_start_matches('[')).unwrap_or("") } else { host.split(':').next().unwrap_or("") };
    if name.is_empty() {
        return Some(format!("`{url}` has no host"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some(format!("`{}` holds white space", url.escape_default()));
    }
    let loopback = matches!(name, "localhost" | "127.0.0.1" | "::1");
    match scheme {
        "https" => None,
        "http" if loopback => None,
        "http" => Some(format!("`{url}` is plain http: the summary would cross the network unencrypted (use https; http only to localhost)")),
        other => Some(format!("`{url}` is not an http(s) URL ({other})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_sorted_and_unique() {
        let mut v = REGIONS.to_vec();
        v.sort();
        v.dedup();
        assert_eq!(v, REGIONS);
        assert!(known_region("us-east-1") && known_region("us-gov-west-1") && !known_region("us-east-99"));
    }

    #[test]
    fn parameter_names() {
        assert_eq!(parameter_name_problem("/bake/web/production/ami-id"), None);
        for bad in ["bake/x", "/bake/a b", "/aws/x", "/SSM/x", "/awsome", "/bake//x", "/bake/x/", "/bake/ü"] {
            assert!(parameter_name_problem(bad).is_some(), "{bad}");
        }
        assert!(parameter_name_problem(&format!("/{}", "a/".repeat(16) + "b")).unwrap().contains("levels"));
        assert!(parameter_name_problem(&format!("/{}", "a".repeat(3000))).unwrap().contains("characters"));
    }

    #[test]
    fn shapes() {
        assert!(valid_instance_type("t3.small") && valid_instance_type("u-6tb1.metal") && valid_instance_type("c7gn.16xlarge"));
        assert!(!valid_instance_type(".") && !valid_instance_type("t3") && !valid_instance_type("T3.small") && !valid_instance_type("t3.small.x"));
        assert!(valid_kms_key("alias/ebs-golden") && valid_kms_key("0a1b2c3d-4e5f-6789-abcd-ef0123456789"));
        assert!(valid_kms_key("arn:aws:kms:us-west-2:111122223333:key/0a1b2c3d-4e5f-6789-abcd-ef0123456789"));
        assert!(valid_kms_key("arn:aws:kms:us-west-2:111122223333:alias/golden"));
        assert!(!valid_kms_key("alias/aws/ebs") && !valid_kms_key("key") && !valid_kms_key("arn:aws:kms:us-west-2:1:key/x"));
        assert!(valid_sns_topic_arn("arn:aws:sns:us-east-1:111122223333:bakes") && valid_sns_topic_arn("arn:aws:sns:us-east-1:111122223333:b.fifo"));
        assert!(
            !valid_sns_topic_arn("arn::sns:")
                && !valid_sns_topic_arn("arn:aws:sns:us-east-1:111122223333:")
                && !valid_sns_topic_arn("arn:aws:sqs:us-east-1:111122223333:q")
        );
        assert_eq!(webhook_problem("https://hooks.example.com/bake"), None);
        assert_eq!(webhook_problem("http://127.0.0.1:8080/x"), None);
        for bad in ["https://", "http://hooks.example.com/x", "ftp://x/y", "https:///x", "https://exa mple.com"] {
            assert!(webhook_problem(bad).is_some(), "{bad}");
        }
    }
}
