//! The image each container service of a release runs, recorded once.

use std::collections::BTreeMap;

use rusqlite::params;

use client::wire::ReleaseNumber;

use super::{Store, StoreError};

/// The images of a release's container services: service name → image id.
pub type ReleaseImages = BTreeMap<String, String>;

impl Store {
    /// Records the image of `service` in a release; a second, different record is refused.
    pub fn set_release_image(
        &self,
        app: &str,
        env: &str,
        release: ReleaseNumber,
        service: &str,
        image: &str,
    ) -> Result<(), StoreError> {
        let subject = format!("image of `{service}` in release {release} of `{app}` in `{env}`");
        let connection = self.connection();
        connection
            .execute(
                "INSERT INTO release_images (app, environment, release, service, image) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (app, environment, release, service) DO NOTHING",
                params![app, env, i64::try_from(release.get()).unwrap_or(i64::MAX), service, image],
            )
            .map_err(|source| self.error("record a release image", subject, source))?;
        Ok(())
    }

    /// The images of a release's container services.
    pub fn release_images(
        &self,
        app: &str,
        env: &str,
        release: ReleaseNumber,
    ) -> Result<ReleaseImages, StoreError> {
        let subject = format!("images of release {release} of `{app}` in `{env}`");
        let connection = self.connection();
        let mut statement = connection
            .prepare("SELECT service, image FROM release_images WHERE app = ?1 AND environment = ?2 AND release = ?3")
            .map_err(|source| self.error("read release images", subject.clone(), source))?;
        let rows = statement
            .query_map(
                params![app, env, i64::try_from(release.get()).unwrap_or(i64::MAX)],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .map_err(|source| self.error("read release images", subject.clone(), source))?;
        rows.collect::<Result<BTreeMap<_, _>, _>>()
            .map_err(|source| self.error("read release images", subject, source))
    }
}
