# This project's record of the mirrored rows seed_demo_generation inserted (generation.demo): `--clear`
# refuses a database whose tables hold anything else. Empty in every real database.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('generation', '0004_unknown_status_index'),
    ]

    operations = [
        migrations.CreateModel(
            name='DemoRow',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('kind', models.CharField(choices=[('status', 'generation status'), ('lock', 'generation lock')], max_length=10)),
                ('row_id', models.BigIntegerField()),
                ('lock_id', models.TextField()),
            ],
            options={
                'constraints': [models.UniqueConstraint(fields=('kind', 'row_id'), name='demo_row_kind_row_id_uniq')],
            },
        ),
    ]
