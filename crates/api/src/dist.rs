//! Files the service hands out to VMs: the agent's systemd unit and the
//! `curl … | sh` installer.

/// The systemd unit; `@MEMORY_MAX@` is replaced on install (platform: 512M).
pub const AGENT_UNIT: &str = include_str!("../dist/ibkit-agent.service");

const INSTALL_SH_TEMPLATE: &str = include_str!("../dist/install.sh");

/// The installer with the service's URL and certificate pins filled in.
///
/// `cert_sha256` is the hex SHA-256 of the service certificate (DER) that
/// the agent pins; `curl_pin` is curl's `sha256//BASE64` public-key pin.
/// Both are empty when the service uses a certificate the VM already trusts.
pub fn install_script(server_url: &str, cert_sha256: &str, curl_pin: &str) -> String {
    INSTALL_SH_TEMPLATE
        .replace("@SERVER_URL@", server_url.trim_end_matches('/'))
        .replace("@CERT_SHA256@", cert_sha256)
        .replace("@CURL_PIN@", curl_pin)
        .replace("@AGENT_UNIT@", AGENT_UNIT.trim_end())
}

/// The command an operator runs on a VM (as root) to install and pair the
/// agent of `host`: the key travels in the environment (`IBKIT_PAIRING_KEY`),
/// never on a command line, and a failed or cut-short download makes the
/// command fail instead of running an empty or partial script (see
/// `install.sh`). `curl_pin` is curl's `sha256//BASE64` pin, empty when the
/// service's certificate is trusted by the VM.
///
/// ```text
/// IBKIT_PAIRING_KEY=KEY sh -c "$(curl -fsS -g -k --pinnedpubkey 'sha256//…' URL/v1/agent/install.sh || printf '\nexit 1')" ibkit-install --instance ID --host HOST
/// ```
pub fn install_command(
    server_url: &str,
    curl_pin: &str,
    instance: &str,
    host: &str,
    pairing_key: &str,
) -> String {
    let pin = if curl_pin.is_empty() {
        String::new()
    } else {
        format!("-k --pinnedpubkey '{curl_pin}' ")
    };
    format!(
        "IBKIT_PAIRING_KEY={pairing_key} sh -c \"$(curl -fsS -g {pin}{}/v1/agent/install.sh || printf '\\nexit 1')\" ibkit-install --instance {instance} --host {host}",
        server_url.trim_end_matches('/')
    )
}

/// The unit with a memory cap filled in.
pub fn agent_unit(memory_max: &str) -> String {
    AGENT_UNIT.replace("@MEMORY_MAX@", memory_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installer_is_filled_in() {
        let s = install_script("https://10.0.2.2:8443/", "ab12", "sha256//xyz=");
        assert!(s.contains("SERVER_URL='https://10.0.2.2:8443'"));
        assert!(s.contains("CERT_SHA256='ab12'"));
        assert!(
            s.contains("--server-url) server_url="),
            "the override option"
        );
        assert!(s.contains("Type=notify"));
        assert!(!s.contains("@SERVER_URL@") && !s.contains("@AGENT_UNIT@"));
        // The unit's own placeholder is filled in by the script at install time.
        assert!(s.contains("@MEMORY_MAX@"));
        assert!(agent_unit("512M").contains("MemoryMax=512M"));
        // The whole script is one function, called on the last line.
        assert!(s.trim_end().ends_with("ibkit_install \"$@\""), "{s}");
    }

    #[test]
    fn install_command_keeps_the_key_off_the_command_line() {
        let c = install_command("https://h:8443/", "sha256//abc=", "i1", "db", "k3y");
        assert_eq!(
            c,
            "IBKIT_PAIRING_KEY=k3y sh -c \"$(curl -fsS -g -k --pinnedpubkey 'sha256//abc=' https://h:8443/v1/agent/install.sh || printf '\\nexit 1')\" ibkit-install --instance i1 --host db"
        );
        assert!(!install_command("http://h", "", "i", "h", "k").contains("pinnedpubkey"));
    }
}
