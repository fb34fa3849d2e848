"""Master data for the Tryton used by the tests, made through proteus (Tryton's client).

A company (Tenon Demo GmbH, EUR) with Tryton's minimal chart of accounts, fiscal years
from last year to two years ahead (with their periods and invoice sequences), a 19 %
customer tax (VAT 19%) on the products' account category, payment terms Net30 and
Net45, the customers of the example quotes as parties whose code is their CRM account
id, the example's products (goods and services) whose code is the CPQ product code, one
product that is not for sale, and a sale price list for one customer (Contoso: 5% off
the list price, 10% from 10 units). Enough for a sale to be quoted, confirmed and
invoiced. Usage: setup_data.py <trytond.conf> <database>.
"""

import datetime
import sys
from decimal import Decimal

from proteus import Model, config
from trytond.modules.account.tests.tools import (
    create_chart, create_fiscalyear, create_tax, get_accounts)
from trytond.modules.account_invoice.tests.tools import (
    set_fiscalyear_invoice_sequences)
from trytond.modules.company.tests.tools import create_company, get_company
from trytond.modules.currency.tests.tools import get_currency

conf, database = sys.argv[1], sys.argv[2]
config.set_trytond(database=database, config_file=conf)

Party = Model.get("party.party")
# Tryton's own set-up helpers (shipped with the modules): the company wizard, then
# the admin user's preferences reloaded so that the company is in the context.
company_party = Party(name="Tenon Demo GmbH")
company_party.save()
create_company(party=company_party, currency="EUR")
get_currency("USD")
company = get_company()

# Accounting: the chart, a fiscal year per calendar year around today, the tax.
create_chart(company)
accounts = get_accounts(company)
this_year = datetime.date.today().year
for year in range(this_year - 1, this_year + 3):
    fiscalyear = set_fiscalyear_invoice_sequences(create_fiscalyear(
        company, (datetime.date(year, 1, 1), datetime.date(year, 12, 31))))
    fiscalyear.click("create_period")
vat = create_tax(Decimal(".19"))
vat.name = vat.description = "VAT 19%"
vat.save()
Category = Model.get("product.category")
category = Category(name="Sales", accounting=True)
category.account_revenue = accounts["revenue"]
category.account_expense = accounts["expense"]
category.customer_taxes.append(vat)
category.save()
PaymentTerm = Model.get("account.invoice.payment_term")
for name, days in [("Net30", 30), ("Net45", 45)]:
    term = PaymentTerm(name=name)
    line = term.lines.new(type="remainder")
    line.relativedeltas.new(days=days)
    term.save()

CUSTOMERS = [
    ("0015g00000XyZ12AAB", "Northwind Traders GmbH"),
    ("0015g00000XyZ34AAB", "Contoso Retail SAS"),
    # The customer of Stripe's published invoice fixture (credit notes name it).
    ("cus_QsYn1aSStYv4tf", "Stripe Fixture Customer"),
]
parties = {}
for code, name in CUSTOMERS:
    party = Party(name=name, code=code)
    party.save()
    parties[code] = party

Uom = Model.get("product.uom")
unit, = Uom.find([("name", "=", "Unit")])
Template = Model.get("product.template")
PRODUCTS = [
    ("HW-LAP-14", "Laptop 14", "goods", "1299"),
    ("HW-DOCK-C", "USB-C Dock", "goods", "259"),
    ("BND-ANALYTICS", "Store Analytics Bundle", "service", "0"),
    ("HW-GW-02", "In-Store Sensor Gateway", "goods", "450"),
    ("SVC-ONB", "Onboarding Workshop", "service", "1200"),
    ("SW-ANL-LIC", "Analytics License", "service", "51"),
]
for code, name, kind, price in PRODUCTS:
    template = Template(
        name=name,
        code=code,
        type=kind,
        salable=True,
        default_uom=unit,
        list_price=Decimal(price),
        account_category=category,
    )
    template.save()
# A spare part that is bought, never sold.
Template(
    name="Spare Fan", code="HW-FAN-SP", type="goods", salable=False,
    default_uom=unit, list_price=Decimal("35"),
).save()

# Contoso's sale price list (the first matching line counts): 10% off the list price
# from 10 units, 5% off below. Northwind has none: it pays the list price.
PriceList = Model.get("product.price_list")
price_list = PriceList(name="Contoso Retail", price="list_price")
price_list.lines.new(sequence=10, quantity=10, formula="unit_price * Decimal('0.90')")
price_list.lines.new(sequence=20, formula="unit_price * Decimal('0.95')")
price_list.save()
contoso = parties["0015g00000XyZ34AAB"]
contoso.sale_price_list = price_list
contoso.save()

print("companies:", [c.rec_name for c in Model.get("company.company").find([])])
print("fiscal years:", [f.name for f in Model.get("account.fiscalyear").find([])])
print("taxes:", [t.name for t in Model.get("account.tax").find([])])
print("addresses:", [(p.code, len(p.addresses)) for p in parties.values()])
print("parties:", [(p.code, p.name) for p in Party.find([("code", "in", [c for c, _ in CUSTOMERS])])])
Product = Model.get("product.product")
print("products:", [p.code for p in Product.find([])])
print("price lists:", [(p.code, p.sale_price_list and p.sale_price_list.name) for p in parties.values()])
