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
    }
}
